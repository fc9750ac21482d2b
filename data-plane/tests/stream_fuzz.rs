//! Property tests: no sequence of upstream frames, however malformed, makes a stream decoder,
//! a passthrough sniffer or a renderer panic; and events that decode are always rendered.

use proptest::prelude::*;
use switchyard_data_plane::dialect::{
    anthropic, bedrock, completions, gemini, openai_chat, responses,
};
use switchyard_data_plane::llm::Event;
use switchyard_data_plane::upstream::Frame;

/// Frames that are often nearly right: real event names, JSON fragments of each format.
fn frame() -> impl Strategy<Value = Frame> {
    let names = prop::sample::select(vec![
        "",
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
        "response.completed",
    ]);
    let fragments = prop::sample::select(vec![
        r#"{"type":"message_start","message":{"id":"m","model":"x","usage":{"input_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f"}}"#,
        r#"{"type":"content_block_delta","index":7,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":3}}"#,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"arguments":"x"}}]}}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"a","reasoning_content":"b"},"finish_reason":"length"}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}},{"text":"t","thought":true}]},"finishReason":"SAFETY"}]}"#,
        r#"{"contentBlockIndex":4,"delta":{"toolUse":{"input":"{"}}}"#,
        r#"{"contentBlockIndex":0,"start":{"toolUse":{"toolUseId":"a","name":"b"}}}"#,
        r#"{"stopReason":"tool_use"}"#,
        r#"{"usage":{"inputTokens":1,"outputTokens":2}}"#,
        r#"{"response":{"usage":{"input_tokens":1}}}"#,
        "[DONE]",
        "{",
        "null",
        "[]",
        "\"s\"",
        "{\"error\":{}}",
        "",
    ]);
    (names, fragments, any::<bool>(), ".{0,8}").prop_map(|(n, f, exception, junk)| Frame {
        event: (!n.is_empty()).then(|| n.to_owned()),
        data: if junk.is_empty() {
            f.to_owned()
        } else {
            format!("{f}{junk}")
        },
        exception,
    })
}

fn render_all(events: Vec<Event>) {
    let mut out = Vec::new();
    let mut chat = openai_chat::Renderer::new(true);
    let mut msgs = anthropic::Renderer::new();
    let mut resp = responses::Renderer::new(responses::Echo::default());
    let mut comp = completions::Renderer::new(true);
    for e in events {
        chat.event(e.clone(), &mut out);
        msgs.event(e.clone(), &mut out);
        resp.event(e.clone(), &mut out);
        comp.event(e, &mut out);
    }
    chat.done(&mut out);
    msgs.done(&mut out);
    resp.done(&mut out);
    comp.done(&mut out);
    for b in out {
        let text = std::str::from_utf8(&b).expect("renderers write UTF-8");
        assert!(
            text.ends_with("\n\n"),
            "every rendered event is a whole SSE event: {text:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_and_renderers_never_panic(frames in proptest::collection::vec(frame(), 0..24)) {
        let mut events = Vec::new();
        let mut oa = openai_chat::Decoder::default();
        let mut an = anthropic::Decoder::default();
        let mut ge = gemini::Decoder::default();
        let mut br = bedrock::Decoder::new(true);
        for f in &frames {
            let _ = oa.frame(f, &mut events);
            let _ = an.frame(f, &mut events);
            let _ = ge.frame(f, &mut events);
            let _ = br.frame(f, &mut events);
        }
        let _ = ge.end(&mut events);
        let _ = br.end(&mut events);
        render_all(events);
    }

    #[test]
    fn sniffers_never_panic(frames in proptest::collection::vec(frame(), 0..24), wants_usage in any::<bool>()) {
        let mut out = Vec::new();
        let mut oa = openai_chat::Sniffer::new(wants_usage);
        let mut an = anthropic::Sniffer::new();
        let mut re = responses::Sniffer::default();
        for f in &frames {
            let _ = oa.frame(f, &mut out);
            let _ = an.frame(f, &mut out);
            let _ = re.frame(f, &mut out);
        }
        let _ = (oa.usage, an.usage(), re.usage);
    }
}

//! Guardrails: detectors of personal data and secrets ([`detect`]), what to do with what they
//! find ([`Action`]), on whole texts ([`apply`]) and on streams ([`stream::Redactor`]).

pub(crate) mod detect;
pub(crate) mod enforce;
pub(crate) mod events;
pub(crate) mod normalize;
pub(crate) mod phrases;
pub(crate) mod schema;
pub(crate) mod stream;
pub(crate) mod webhook;

use detect::Entity;

/// What a guardrail does with a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Let it through; log and count.
    Alert,
    /// Replace it with a placeholder naming the entity, e.g. `[EMAIL]`.
    Redact,
    /// Replace every character but the last four with `*`.
    Mask,
    /// Refuse the request (or end the stream) with `guardrail_blocked`.
    Block,
}

impl Action {
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "Alert" => Self::Alert,
            "Redact" => Self::Redact,
            "Mask" => Self::Mask,
            "Block" => Self::Block,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Alert => "Alert",
            Self::Redact => "Redact",
            Self::Mask => "Mask",
            Self::Block => "Block",
        }
    }
}

/// One finding and what was done with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub entity: Entity,
    pub action: Action,
}

/// The action for each entity a set of guardrails looks for. Where two guardrails disagree,
/// the stricter action wins (`Block` over `Mask` over `Redact` over `Alert`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    actions: Vec<(Entity, Action)>,
    entities: Vec<Entity>,
}

impl Rules {
    pub fn new(pairs: impl IntoIterator<Item = (Entity, Action)>) -> Self {
        let mut r = Self::default();
        for (e, a) in pairs {
            r.add(e, a);
        }
        r
    }

    pub fn add(&mut self, entity: Entity, action: Action) {
        match self.actions.iter_mut().find(|(e, _)| *e == entity) {
            Some((_, a)) => *a = (*a).max(action),
            None => {
                self.actions.push((entity, action));
                self.entities.push(entity);
            }
        }
    }

    /// The rules of several guardrails together (the stricter action per entity).
    pub fn union<'r>(all: impl IntoIterator<Item = &'r Rules>) -> Self {
        let mut out = Self::default();
        for r in all {
            for &(e, a) in &r.actions {
                out.add(e, a);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn has(&self, entity: Entity) -> bool {
        self.entities.contains(&entity)
    }

    pub fn entities(&self) -> &[Entity] {
        &self.entities
    }

    pub fn action(&self, entity: Entity) -> Action {
        self.actions
            .iter()
            .find(|(e, _)| *e == entity)
            .map_or(Action::Alert, |(_, a)| *a)
    }
}

/// Writes what replaces a finding.
fn replace(found: &str, entity: Entity, action: Action, out: &mut String) {
    match action {
        Action::Mask => {
            let n = found.chars().count();
            out.extend(std::iter::repeat_n('*', n.saturating_sub(4)));
            out.extend(found.chars().skip(n.saturating_sub(4)));
        }
        _ => out.push_str(entity.placeholder()),
    }
}

/// The action a finding gets: a secret candidate too long to be seen whole on a stream is
/// blocked unless the rule only alerts (see [`detect::Span::overlong`]).
fn action_for(rules: &Rules, s: &detect::Span) -> Action {
    let action = rules.action(s.entity);
    if s.overlong && action > Action::Alert {
        Action::Block
    } else {
        action
    }
}

/// Applies `rules` to a whole text: the text with its findings redacted or masked, and what
/// was found; or the entity that blocks it. `None` when nothing changed the text. The
/// detectors read the text's normal form ([`normalize`]); redactions replace the original
/// characters behind a finding, and the rest of the text is left as it was.
pub(crate) fn apply(
    text: &str,
    rules: &Rules,
    findings: &mut Vec<Finding>,
) -> Result<Option<String>, Entity> {
    apply_normalized(text, &normalize::Normalized::new(text), rules, findings)
}

/// [`apply`] over a text already normalised.
pub(crate) fn apply_normalized(
    text: &str,
    norm: &normalize::Normalized<'_>,
    rules: &Rules,
    findings: &mut Vec<Finding>,
) -> Result<Option<String>, Entity> {
    let spans = detect::find(norm.text(), rules.entities());
    let mut out: Option<String> = None;
    let mut at = 0;
    for s in spans {
        let action = action_for(rules, &s);
        findings.push(Finding {
            entity: s.entity,
            action,
        });
        match action {
            Action::Block => return Err(s.entity),
            Action::Alert => {}
            Action::Redact | Action::Mask => {
                // Two findings can meet inside one original character (`¼` is `1⁄4`):
                // the second is redacted from where the first ended.
                let r = norm.original(s.start..s.end);
                let start = r.start.max(at);
                if r.end <= at {
                    continue;
                }
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[at..start]);
                replace(&text[start..r.end], s.entity, action, o);
                at = r.end;
            }
        }
    }
    if let Some(o) = &mut out {
        o.push_str(&text[at..]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stream::Redactor;

    fn rules(action: Action) -> Rules {
        Rules::new(Entity::ALL.into_iter().map(|e| (e, action)))
    }

    const TEXT: &str = "Mail jane.doe@example.com, card 4111 1111 1111 1111, \
        iban GB82 WEST 1234 5698 7654 32, ssn 123-45-6789, from 10.0.0.1, \
        call +44 20 7946 0958, key sk-proj-abcdefghijklmnopqrstuvwx. Thanks!";

    const REDACTED: &str = "Mail [EMAIL], card [CREDIT_CARD], iban [IBAN], ssn [SSN], \
        from [IP_ADDRESS], call [PHONE], key [SECRET]. Thanks!";

    /// Invisible characters normalise to nothing, so no held-tail bound sees them: with
    /// nothing held they go out at once, and inside a held tail they are dropped past a
    /// bound, so an upstream streaming them without end grows nothing.
    #[test]
    fn invisible_characters_never_pile_up_in_a_stream() {
        let mut r = Redactor::new(rules(Action::Redact));
        let mut out = r.push("ok. ").expect("pass");
        for _ in 0..50_000 {
            out.push_str(&r.push("\u{200B}").expect("pass"));
            assert!(r.held().is_empty(), "held {} bytes", r.held().len());
        }
        out.push_str(&r.push("bye").expect("pass"));
        out.push_str(&r.finish().expect("pass"));
        assert_eq!(
            out,
            format!("ok. {}bye", "\u{200B}".repeat(50_000)),
            "nothing lost"
        );

        // Inside a number that may become a card.
        let mut r = Redactor::new(rules(Action::Redact));
        let mut out = r.push("card 4111").expect("pass");
        for _ in 0..50_000 {
            out.push_str(&r.push("\u{200B}").expect("pass"));
            assert!(
                r.held().len() <= stream::MAX_HELD + 8,
                "held {}",
                r.held().len()
            );
        }
        out.push_str(&r.push(" 1111 1111 1111 and more").expect("pass"));
        out.push_str(&r.finish().expect("pass"));
        assert!(
            out.starts_with("card [CREDIT_CARD] and more"),
            "{}",
            &out[..40]
        );
        assert!(!out.contains("4111"));
    }

    #[test]
    fn whole_texts_are_redacted_masked_or_blocked() {
        let mut f = Vec::new();
        let out = apply(TEXT, &rules(Action::Redact), &mut f).expect("not blocked");
        assert_eq!(out.as_deref(), Some(REDACTED));
        assert_eq!(f.len(), 7);
        let out = apply("card 4111 1111 1111 1111", &rules(Action::Mask), &mut f).expect("masked");
        assert_eq!(out.as_deref(), Some("card ***************1111"));
        assert_eq!(
            apply(TEXT, &rules(Action::Block), &mut f),
            Err(Entity::Email)
        );
        let mut f = Vec::new();
        assert_eq!(apply(TEXT, &rules(Action::Alert), &mut f), Ok(None));
        assert_eq!(
            f.len(),
            7,
            "alerts are found and counted, the text is left alone"
        );
        assert_eq!(
            apply("nothing here", &rules(Action::Redact), &mut f),
            Ok(None)
        );
    }

    #[test]
    fn the_stricter_action_wins() {
        let mut r = Rules::default();
        r.add(Entity::Email, Action::Redact);
        r.add(Entity::Email, Action::Block);
        r.add(Entity::Email, Action::Alert);
        assert_eq!(r.action(Entity::Email), Action::Block);
        assert_eq!(r.entities(), [Entity::Email]);
    }

    fn streamed(pieces: &[&str], rules: &Rules) -> Result<String, Entity> {
        let mut r = Redactor::new(rules.clone());
        let mut out = String::new();
        for p in pieces {
            out.push_str(&r.push(p)?);
        }
        out.push_str(&r.finish()?);
        Ok(out)
    }

    /// Every split point of the text, as two pieces and as one character at a time: the
    /// stream's output is the whole text's redaction, and nothing of a value leaks first.
    #[test]
    fn a_value_split_at_any_point_is_redacted() {
        let r = rules(Action::Redact);
        for i in 1..TEXT.len() {
            if !TEXT.is_char_boundary(i) {
                continue;
            }
            let (a, b) = TEXT.split_at(i);
            assert_eq!(
                streamed(&[a, b], &r).as_deref(),
                Ok(REDACTED),
                "split at {i}"
            );
        }
        let chars: Vec<String> = TEXT.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(streamed(&pieces, &r).as_deref(), Ok(REDACTED));
    }

    #[test]
    fn a_blocked_value_ends_the_stream_before_any_of_it_leaks() {
        let r = rules(Action::Block);
        let text = "the card is 4111 1111 1111 1111 ok";
        for i in 1..text.len() {
            let (a, b) = text.split_at(i);
            let mut red = Redactor::new(r.clone());
            let mut out = String::new();
            let mut blocked = None;
            for p in [a, b] {
                match red.push(p) {
                    Ok(s) => out.push_str(&s),
                    Err(e) => {
                        blocked = Some(e);
                        break;
                    }
                }
            }
            if blocked.is_none() {
                blocked = red.finish().err();
            }
            assert_eq!(blocked, Some(Entity::CreditCard), "split at {i}");
            assert!(!out.contains("4111"), "split at {i}: {out}");
        }
    }

    #[test]
    fn only_the_tail_that_could_grow_is_held() {
        let mut r = Redactor::new(rules(Action::Redact));
        assert_eq!(
            r.push("Hello, how are you today? I am ").as_deref(),
            Ok("Hello, how are you today? I am ")
        );
        assert_eq!(r.held(), "");
        assert_eq!(
            r.push("fine, write to jane@exa").as_deref(),
            Ok("fine, write to ")
        );
        assert_eq!(r.held(), "jane@exa");
        assert_eq!(r.push("mple.com today").as_deref(), Ok("[EMAIL] "));
        assert_eq!(r.held(), "today");
        assert_eq!(r.finish().as_deref(), Ok("today"));
    }

    /// Random text from an alphabet rich in the detectors' characters, cut at random: no
    /// panic, and the stream says what the whole text says.
    #[test]
    fn random_text_in_random_pieces_matches_the_whole() {
        const ALPHABET: &[&str] = &[
            "a",
            "Z",
            "0",
            "4",
            "1",
            " ",
            "-",
            ".",
            "@",
            ":",
            "+",
            "(",
            ")",
            "_",
            "é",
            "😀",
            "\n",
            "sk-",
            "AKIA",
            "GB82",
            "4111 ",
            "@ex.com",
            "::",
            "-----BEGIN ",
            "４",
            "\u{200B}",
            "\u{FF0E}",
            "\\u0034",
            "\\u00",
            "\\",
            "eyJ",
            ".",
            "ﬁ",
            "\u{E0041}",
        ];
        let r = rules(Action::Redact);
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..2000 {
            let text: String = (0..rng.usize(0..120))
                .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
                .collect();
            let whole = apply(&text, &r, &mut Vec::new())
                .expect("redact never blocks")
                .unwrap_or_else(|| text.clone());
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < text.len() {
                let mut end = (at + rng.usize(1..8)).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                pieces.push(&text[at..end]);
                at = end;
            }
            assert_eq!(
                streamed(&pieces, &r).as_deref(),
                Ok(whole.as_str()),
                "{text:?}"
            );
        }
    }

    /// Ordinary text with numbers is held only as far as it could still grow into a match:
    /// "66 is" has ended, while "0 " after a word may be the start of a card (a letter
    /// before a card does not hide it: `cc4111 1111 ...`).
    #[test]
    fn only_numbers_that_could_grow_are_held() {
        let mut r = Redactor::new(rules(Action::Redact));
        assert_eq!(
            r.push("route66 is long ").as_deref(),
            Ok("route66 is long ")
        );
        assert_eq!(r.push("tok0 ").as_deref(), Ok("tok"));
        assert_eq!(r.held(), "0 ");
        assert_eq!(r.push("x. ").as_deref(), Ok("0 x. "));
        assert_eq!(
            r.push("call 55").as_deref(),
            Ok("call "),
            "may grow into a number"
        );
        assert_eq!(r.held(), "55");
        let text = "cc4111111111111111 and ssn_078-05-1120 and xAKIAIOSFODNN7EXAMPLEx";
        assert_eq!(
            apply(text, &rules(Action::Redact), &mut Vec::new())
                .expect("redact")
                .as_deref(),
            Some("cc[CREDIT_CARD] and ssn_[SSN] and x[SECRET]x")
        );
    }

    /// Every cut into three pieces of a text where word boundaries decide matches (the
    /// context a stream keeps must judge them as the whole text does).
    #[test]
    fn three_piece_cuts_judge_word_boundaries_as_the_whole_text() {
        let text = "😀_aGB82@ex.comZ@ex.com-----BEGIN sk- x4111 1111 1111 1111 y";
        let r = rules(Action::Redact);
        let whole = apply(text, &r, &mut Vec::new())
            .expect("redact")
            .unwrap_or_else(|| text.to_owned());
        let cuts: Vec<usize> = (1..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for (n, &i) in cuts.iter().enumerate() {
            for &j in &cuts[n + 1..] {
                let pieces = [&text[..i], &text[i..j], &text[j..]];
                assert_eq!(
                    streamed(&pieces, &r).as_deref(),
                    Ok(whole.as_str()),
                    "cuts {i} {j}"
                );
            }
        }
    }

    /// Pieces of `text` cut at random character boundaries.
    fn cut<'t>(text: &'t str, rng: &mut fastrand::Rng, most: usize) -> Vec<&'t str> {
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + rng.usize(1..=most)).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            pieces.push(&text[at..end]);
            at = end;
        }
        pieces
    }

    #[test]
    fn lookalike_digits_and_invisible_separators_are_found_whole_and_streamed() {
        let r = rules(Action::Redact);
        for text in [
            "card ４１１１ １１１１ １１１１ １１１１ ok",
            "card 4111\u{200B}1111\u{200B}1111\u{200B}1111 ok",
            "card 4111.1111.1111.1111 ok",
            "card 4111\\u00201111\\u00201111\\u00201111 ok",
            "card 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 ok",
            "card 4111  1111  1111  1111 ok",
            "card 4111/1111/1111/1111 ok",
            "card 4111\n1111\n1111\n1111 ok",
            "card ٤١١١ ١١١١ ١١١١ ١١١١ ok",
            "card 4\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}1\u{FE0F}\u{20E3}111111111111 ok",
        ] {
            let whole = apply(text, &r, &mut Vec::new()).expect("redact");
            assert_eq!(whole.as_deref(), Some("card [CREDIT_CARD] ok"), "{text:?}");
            let mut rng = fastrand::Rng::with_seed(3);
            for _ in 0..50 {
                let pieces = cut(text, &mut rng, 4);
                assert_eq!(
                    streamed(&pieces, &r).as_deref(),
                    Ok("card [CREDIT_CARD] ok"),
                    "{pieces:?}"
                );
            }
        }
    }

    #[test]
    fn a_long_jwt_streamed_is_redacted_as_the_whole_answer_is() {
        let jwt = format!(
            "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJ{}.{}",
            "c3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50".repeat(20),
            "S".repeat(100)
        );
        assert!(jwt.len() > 800);
        let text = format!("the token is {jwt} — keep it safe");
        let r = rules(Action::Redact);
        let whole = apply(&text, &r, &mut Vec::new()).expect("redact");
        assert_eq!(
            whole.as_deref(),
            Some("the token is [SECRET] — keep it safe")
        );
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..20 {
            let pieces = cut(&text, &mut rng, 16);
            assert_eq!(
                streamed(&pieces, &r).as_deref(),
                Ok(whole.as_deref().unwrap_or(""))
            );
        }
    }

    #[test]
    fn a_secret_growing_past_the_bound_blocks_before_any_of_it_leaks() {
        let text = format!("key sk-proj-{} end", "q".repeat(detect::SECRET_BOUND + 100));
        for action in [Action::Redact, Action::Mask, Action::Block] {
            let r = Rules::new([(Entity::Secret, action)]);
            assert_eq!(apply(&text, &r, &mut Vec::new()), Err(Entity::Secret));
            let mut red = Redactor::new(r);
            let mut out = String::new();
            let mut blocked = None;
            for p in cut(&text, &mut fastrand::Rng::with_seed(9), 64) {
                match red.push(p) {
                    Ok(s) => out.push_str(&s),
                    Err(e) => {
                        blocked = Some(e);
                        break;
                    }
                }
            }
            assert_eq!(blocked, Some(Entity::Secret), "{action:?}");
            assert_eq!(out, "key ", "nothing of the key went out");
        }
        // An alert lets it through (counted), whole and streamed alike.
        let alert = Rules::new([(Entity::Secret, Action::Alert)]);
        assert_eq!(apply(&text, &alert, &mut Vec::new()), Ok(None));
        let pieces = cut(&text, &mut fastrand::Rng::with_seed(9), 64);
        assert_eq!(streamed(&pieces, &alert).as_deref(), Ok(text.as_str()));
    }

    /// Random texts, blocked or not: the stream decides what the whole text decides.
    #[test]
    fn block_decisions_agree_whole_and_streamed() {
        const PARTS: &[&str] = &[
            "a", " ", "4111", " 1111", "-", ".", "４", "\u{200B}", "sk-", "proj", "x", "@ex.com",
            "jane", "GB82", "WEST", "123", "-45-", "6789", "\\u0031", "eyJ", "10.0.0.1",
        ];
        let r = rules(Action::Block);
        let mut rng = fastrand::Rng::with_seed(21);
        for _ in 0..3000 {
            let text: String = (0..rng.usize(0..40))
                .map(|_| PARTS[rng.usize(..PARTS.len())])
                .collect();
            let whole = apply(&text, &r, &mut Vec::new()).is_err();
            let pieces = cut(&text, &mut rng, 6);
            let stream = streamed(&pieces, &r);
            assert_eq!(stream.is_err(), whole, "{text:?} -> {stream:?}");
        }
    }

    /// Two findings meeting inside one character: the second is not given away.
    #[test]
    fn findings_sharing_a_character_are_both_redacted() {
        let r = rules(Action::Redact);
        let text = "x 123-45-678¼111 1111 1111 1111 y";
        let whole = apply(text, &r, &mut Vec::new()).expect("redact");
        let whole = whole.as_deref().unwrap_or(text);
        assert!(!whole.contains("1111"), "{whole}");
        let pieces: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let streamed = streamed(&pieces, &r).expect("redact");
        assert!(!streamed.contains("1111"), "{streamed}");
    }

    #[test]
    fn multibyte_text_streams_intact() {
        let text = "Grüße an 😀 jane@example.com — danke";
        let r = rules(Action::Redact);
        for i in 1..text.len() {
            if !text.is_char_boundary(i) {
                continue;
            }
            let (a, b) = text.split_at(i);
            assert_eq!(
                streamed(&[a, b], &r).as_deref(),
                Ok("Grüße an 😀 [EMAIL] — danke"),
                "split at {i}"
            );
        }
    }
}

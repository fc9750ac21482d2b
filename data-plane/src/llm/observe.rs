//! What watches an answer on its way to the client: the limits permit (settled by what the
//! answer used), the endpoint's count of requests in flight (and its health verdict), the
//! cache's recording of a streamed answer, the request's record and transcript, and the
//! guardrails' findings. Each implements [`Observer`]; the renderer tells them every event
//! the client gets and, once, how the answer ended.

use super::{Event, Usage};
use crate::error::FailureClass;

/// Watches an answer as it passes.
pub(crate) trait Observer {
    /// A canonical event of a stream, as the client gets it (after the guardrails).
    fn on_event(&mut self, _ev: &Event) {}

    /// The answer ended; called once.
    fn on_end(&mut self, _end: &End) {}
}

/// How an answer ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct End {
    /// What it used: as reported, or (a stream that broke off) what it used so far; `None`
    /// when an answer passed through reported nothing.
    pub(crate) usage: Option<Usage>,
    pub(crate) how: Ending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Whole, or the upstream signalled the stream's end.
    Complete,
    /// The upstream failed mid-stream (a broken, malformed, silent or late stream, or an
    /// error event).
    Failed(Option<FailureClass>),
    /// A guardrail ended the stream.
    Blocked,
    /// The client went away first.
    Abandoned,
}

impl<T: Observer> Observer for Option<T> {
    fn on_event(&mut self, ev: &Event) {
        if let Some(o) = self {
            o.on_event(ev);
        }
    }

    fn on_end(&mut self, end: &End) {
        if let Some(o) = self {
            o.on_end(end);
        }
    }
}

impl<T: Observer + ?Sized> Observer for Box<T> {
    fn on_event(&mut self, ev: &Event) {
        (**self).on_event(ev);
    }

    fn on_end(&mut self, end: &End) {
        (**self).on_end(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Count {
        events: usize,
        ends: Vec<Ending>,
    }

    impl Observer for Count {
        fn on_event(&mut self, _ev: &Event) {
            self.events += 1;
        }

        fn on_end(&mut self, end: &End) {
            self.ends.push(end.how);
        }
    }

    /// An observer held as an option or in a box is told as it would be alone; an absent one
    /// is skipped.
    #[test]
    fn options_and_boxes_pass_everything_on() {
        let mut held: Option<Box<Count>> = Some(Box::default());
        let mut absent: Option<Count> = None;
        let ev = Event::Usage(Usage::default());
        let end = End {
            usage: None,
            how: Ending::Failed(Some(FailureClass::Timeout)),
        };
        for o in [&mut held as &mut dyn Observer, &mut absent] {
            o.on_event(&ev);
            o.on_event(&ev);
            o.on_end(&end);
        }
        let held = held.expect("kept");
        assert_eq!(held.events, 2);
        assert_eq!(held.ends, [Ending::Failed(Some(FailureClass::Timeout))]);
        assert!(absent.is_none());
    }
}

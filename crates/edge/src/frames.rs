//! Frames encoded once and shared. A count change goes to every session of its user;
//! the first session to write it encodes the frame, and the others write the same bytes
//! (a `Utf8Bytes` is a reference-counted `Bytes`, which tungstenite writes without a
//! copy of its own). A frame's bytes depend on the change and on its [`Shape`]: the
//! protocol and, for ActionCable, the subscription's identifier, which the sessions of
//! one user usually share (every tab of an app subscribes alike). A session whose shape
//! differs from the one cached encodes its own.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What a frame's bytes depend on besides the change it delivers.
#[derive(Debug, Clone, Copy)]
pub enum Shape<'a> {
    /// The JSON protocol's push: nothing else.
    Realtime,
    /// An ActionCable channel message: its subscription's identifier.
    Cable(&'a Arc<str>),
}

#[derive(Debug)]
enum OwnedShape {
    Realtime,
    Cable(Arc<str>),
}

impl OwnedShape {
    fn of(shape: Shape<'_>) -> Self {
        match shape {
            Shape::Realtime => Self::Realtime,
            Shape::Cable(identifier) => Self::Cable(Arc::clone(identifier)),
        }
    }

    fn is(&self, shape: Shape<'_>) -> bool {
        match (self, shape) {
            (Self::Realtime, Shape::Realtime) => true,
            (Self::Cable(held), Shape::Cable(identifier)) => {
                Arc::ptr_eq(held, identifier) || **held == **identifier
            }
            _ => false,
        }
    }
}

/// One change's frame, once a session encoded it. Out of line, so that a change nobody
/// shares costs a pointer; one shape, so that looking it up is one comparison. Held
/// under its user's lock, as the change it belongs to.
#[derive(Debug, Default)]
pub struct SharedFrame(Option<Box<(OwnedShape, Utf8Bytes)>>);

impl SharedFrame {
    /// The frame of `shape`: the one cached if it has that shape, else `encode`d (and
    /// cached, if nothing was).
    pub fn get_or_encode(
        &mut self,
        shape: Shape<'_>,
        encode: impl FnOnce() -> String,
    ) -> Utf8Bytes {
        match &self.0 {
            Some(cached) if cached.0.is(shape) => cached.1.clone(),
            Some(_) => Utf8Bytes::from(encode()),
            None => {
                let frame = Utf8Bytes::from(encode());
                self.0 = Some(Box::new((OwnedShape::of(shape), frame.clone())));
                frame
            }
        }
    }

    /// Drops the cached frame: once every session took its change it only costs memory.
    pub fn clear(&mut self) {
        self.0 = None;
    }

    pub fn is_cached(&self) -> bool {
        self.0.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_encoding_is_shared_by_its_shape_only() {
        let mut shared = SharedFrame::default();
        let identifier: Arc<str> = Arc::from(r#"{"channel":"PartnerChannel"}"#);
        let same_text: Arc<str> = Arc::from(r#"{"channel":"PartnerChannel"}"#);
        let other: Arc<str> = Arc::from(r#"{"channel":"PartnerChannel","n":2}"#);
        let mut encodings = 0;
        let mut encode = |text: &str| {
            encodings += 1;
            text.to_owned()
        };
        let first = shared.get_or_encode(Shape::Cable(&identifier), || encode("a"));
        let again = shared.get_or_encode(Shape::Cable(&same_text), || encode("b"));
        assert_eq!((first.as_str(), again.as_str()), ("a", "a"));
        let different = shared.get_or_encode(Shape::Cable(&other), || encode("c"));
        let realtime = shared.get_or_encode(Shape::Realtime, || encode("d"));
        assert_eq!((different.as_str(), realtime.as_str()), ("c", "d"));
        assert_eq!(encodings, 3);
    }

    #[test]
    fn a_cleared_frame_is_encoded_again() {
        let mut shared = SharedFrame::default();
        assert_eq!(shared.get_or_encode(Shape::Realtime, || "a".into()), "a");
        assert!(shared.is_cached());
        shared.clear();
        assert!(!shared.is_cached());
        assert_eq!(shared.get_or_encode(Shape::Realtime, || "b".into()), "b");
    }
}

//! Server events as the bench reads them: only the fields it looks at, borrowed from
//! the frame where possible, because a fan-out run parses millions of frames and a
//! full `serde_json::Value` per frame would make the client the bottleneck.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

/// A string field that borrows from the frame unless it holds escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'a> Str<'a> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The `req_id` the bench sends is always a number; anything else echoed back is kept
/// only as "present but not ours".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqId {
    Num(u64),
    Other,
}

impl<'de> Deserialize<'de> for ReqId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReqId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a request id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ReqId, E> {
                Ok(ReqId::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ReqId, E> {
                Ok(u64::try_from(v).map(ReqId::Num).unwrap_or(ReqId::Other))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<ReqId, E> {
                Ok(ReqId::Other)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ReqId, E> {
                Ok(v.parse().map(ReqId::Num).unwrap_or(ReqId::Other))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<ReqId, E> {
                Ok(ReqId::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<ReqId, E> {
                Ok(ReqId::Other)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<ReqId, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ReqId::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<ReqId, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ReqId::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// One server event. Unknown types and fields are fine: they are ignored.
#[derive(Debug, Deserialize)]
pub struct Event<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Str<'a>,
    #[serde(default, borrow)]
    pub text: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub room: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub from: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub user: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub status: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub code: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub event: Option<Str<'a>>,
    #[serde(default)]
    pub req_id: Option<ReqId>,
    /// A `message`'s server id (read as leniently as `req_id`: any other event may
    /// carry an `id` of another kind).
    #[serde(default)]
    pub id: Option<ReqId>,
    /// `history` items, counted but not kept.
    #[serde(default)]
    pub items: Option<Vec<IgnoredAny>>,
}

impl<'a> Event<'a> {
    pub fn parse(text: &'a str) -> Option<Event<'a>> {
        serde_json::from_str(text).ok()
    }

    pub fn kind(&self) -> &str {
        self.kind.as_str()
    }

    pub fn field<'s>(f: &'s Option<Str<'a>>) -> Option<&'s str> {
        f.as_ref().map(Str::as_str)
    }

    pub fn req_num(&self) -> Option<u64> {
        match self.req_id {
            Some(ReqId::Num(n)) => Some(n),
            _ => None,
        }
    }

    /// A numeric `id` (a `message`'s server id).
    pub fn id_num(&self) -> Option<u64> {
        match self.id {
            Some(ReqId::Num(n)) => Some(n),
            _ => None,
        }
    }

    /// The error code of an `error` event (`"UNKNOWN"` when it has none).
    pub fn error_code(&self) -> &str {
        Event::field(&self.code).unwrap_or("UNKNOWN")
    }
}

/// Quotes a string as a JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_message_event_borrowing_its_fields() {
        let raw = r#"{"type":"message","id":7,"room":"r_0a1b2c3d","from":"kb_1","from_nickname":"kb_1","text":"b:1:2:3","ts":"2025-10-21T09:26:24.400576+00:00"}"#;
        let ev = Event::parse(raw).unwrap();
        assert_eq!(ev.kind(), "message");
        assert_eq!(Event::field(&ev.room), Some("r_0a1b2c3d"));
        assert_eq!(Event::field(&ev.text), Some("b:1:2:3"));
        assert!(matches!(ev.text.as_ref().unwrap().0, Cow::Borrowed(_)));
        assert_eq!(ev.req_num(), None);
        assert_eq!(ev.id_num(), Some(7));
        // An `id` of another kind does not spoil the event.
        let ev = Event::parse(r#"{"type":"x","id":"abc"}"#).unwrap();
        assert_eq!(ev.id_num(), None);
    }

    #[test]
    fn escaped_strings_and_odd_req_ids_still_parse() {
        let raw = r#"{"type":"error","code":"RATE_LIMITED","detail":"slow \"down\"","req_id":"abc","text":"a\nb"}"#;
        let ev = Event::parse(raw).unwrap();
        assert_eq!(ev.error_code(), "RATE_LIMITED");
        assert_eq!(ev.req_id, Some(ReqId::Other));
        assert_eq!(Event::field(&ev.text), Some("a\nb"));

        let ev = Event::parse(r#"{"type":"error","req_id":42}"#).unwrap();
        assert_eq!(ev.req_num(), Some(42));
        assert_eq!(ev.error_code(), "UNKNOWN");
        let ev = Event::parse(r#"{"type":"x","req_id":{"a":[1]}}"#).unwrap();
        assert_eq!(ev.req_id, Some(ReqId::Other));
    }

    #[test]
    fn history_items_are_counted() {
        let raw = r#"{"type":"history","room":"r_1","items":[{"id":1,"text":"a"},{"id":2,"text":"b"}],"req_id":5}"#;
        let ev = Event::parse(raw).unwrap();
        assert_eq!(ev.items.as_ref().map(Vec::len), Some(2));
        assert_eq!(ev.req_num(), Some(5));
    }

    #[test]
    fn frames_without_a_type_are_rejected() {
        assert!(Event::parse(r#"{"status":"x"}"#).is_none());
        assert!(Event::parse("not json").is_none());
    }

    #[test]
    fn json_str_escapes() {
        assert_eq!(json_str("a\"b"), r#""a\"b""#);
    }
}

//! The WebSocket protocol's shapes: incoming requests, error codes, and events.
//!
//! Every event is a JSON object with `type` and `ts`; direct replies to a request
//! echo its `req_id`. Field names here are a compatibility surface with existing
//! clients (see docs/protocol.md).

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::ws;

/// Error codes of the `error` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    RoomIdRequired,
    RoomIdOrNameRequired,
    RoomIdAndToRequired,
    RoomNotFound,
    NotAMember,
    TextRequired,
    TextTooLong,
    FollowToRequired,
    UnfollowToRequired,
    RateLimited,
    Unavailable,
    /// The user belongs to `KLAV_MAX_ROOMS_PER_USER` rooms already.
    TooManyRooms,
    MessageNotFound,
    NotAuthor,
    BadToken,
    /// The requester's role in the room does not permit the request (v3).
    NotAllowed,
    /// The user is banned from the room (v3).
    Banned,
    /// The user named by the request is not registered (v3).
    UserNotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::RoomIdRequired => "ROOM_ID_REQUIRED",
            ErrorCode::RoomIdOrNameRequired => "ROOM_ID_OR_NAME_REQUIRED",
            ErrorCode::RoomIdAndToRequired => "ROOM_ID_AND_TO_REQUIRED",
            ErrorCode::RoomNotFound => "ROOM_NOT_FOUND",
            ErrorCode::NotAMember => "NOT_A_MEMBER",
            ErrorCode::TextRequired => "TEXT_REQUIRED",
            ErrorCode::TextTooLong => "TEXT_TOO_LONG",
            ErrorCode::FollowToRequired => "FOLLOW_TO_REQUIRED",
            ErrorCode::UnfollowToRequired => "UNFOLLOW_TO_REQUIRED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::TooManyRooms => "TOO_MANY_ROOMS",
            ErrorCode::MessageNotFound => "MESSAGE_NOT_FOUND",
            ErrorCode::NotAuthor => "NOT_AUTHOR",
            ErrorCode::BadToken => "BAD_TOKEN",
            ErrorCode::NotAllowed => "NOT_ALLOWED",
            ErrorCode::Banned => "BANNED",
            ErrorCode::UserNotFound => "USER_NOT_FOUND",
        }
    }
}

/// A request error: a code and an optional human-readable detail.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub detail: Option<String>,
}

impl RequestError {
    pub fn new(code: ErrorCode) -> RequestError {
        RequestError { code, detail: None }
    }

    pub fn with(code: ErrorCode, detail: impl Into<String>) -> RequestError {
        RequestError {
            code,
            detail: Some(detail.into()),
        }
    }
}

impl From<ErrorCode> for RequestError {
    fn from(code: ErrorCode) -> Self {
        RequestError::new(code)
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.code.as_str()),
            None => f.write_str(self.code.as_str()),
        }
    }
}

/// Every request field any handler reads. A field a new request reads must be
/// added here, or it never reaches the handler.
pub const FIELDS: &[&str] = &[
    "type",
    "req_id",
    "room_id",
    "room",
    "text",
    "to",
    "name",
    "limit",
    "before",
    "after",
    "before_id",
    "after_id",
    "client_id",
    "id",
    "rooms",
    "token",
    "topic",
    "private",
    "user",
    "role",
    "reason",
    "watch",
];

/// The [`FIELDS`] entry for a key (a `match`: the compiler makes it a few
/// comparisons, where a scan of the list would be one per field for every unknown key).
fn known_field(key: &str) -> Option<&'static str> {
    let f = match key {
        "type" => "type",
        "req_id" => "req_id",
        "room_id" => "room_id",
        "room" => "room",
        "text" => "text",
        "to" => "to",
        "name" => "name",
        "limit" => "limit",
        "before" => "before",
        "after" => "after",
        "before_id" => "before_id",
        "after_id" => "after_id",
        "client_id" => "client_id",
        "id" => "id",
        "rooms" => "rooms",
        "token" => "token",
        "topic" => "topic",
        "private" => "private",
        "user" => "user",
        "role" => "role",
        "reason" => "reason",
        "watch" => "watch",
        _ => return None,
    };
    debug_assert!(FIELDS.contains(&f));
    Some(f)
}

/// A JSON object's known fields ([`FIELDS`]), or `None` for any other JSON value.
struct KnownFields(Option<Map<String, Value>>);

impl<'de> serde::Deserialize<'de> for KnownFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = KnownFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<KnownFields, A::Error> {
                let mut out = Map::new();
                while let Some(key) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    match known_field(&key) {
                        Some(f) => {
                            out.insert(f.to_string(), m.next_value::<Value>()?);
                        }
                        None => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(KnownFields(Some(out)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<KnownFields, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(KnownFields(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<KnownFields, E> {
                Ok(KnownFields(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<KnownFields, E> {
                Ok(KnownFields(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<KnownFields, E> {
                Ok(KnownFields(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<KnownFields, E> {
                Ok(KnownFields(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<KnownFields, E> {
                Ok(KnownFields(None))
            }
            fn visit_unit<E>(self) -> Result<KnownFields, E> {
                Ok(KnownFields(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A decoded request frame: its `type`, its `req_id` and the rest of the object.
#[derive(Debug)]
pub struct Request {
    pub kind: String,
    pub req_id: Option<Value>,
    pub body: Map<String, Value>,
}

impl Request {
    /// Decodes a text frame. Errors are `BAD_REQUEST`, with the `req_id` when one
    /// could be read.
    ///
    /// Only the fields some request reads ([`FIELDS`]) are kept; every other key
    /// is skipped without building its value, so a frame of thousands of unknown
    /// keys costs a scan, not a map of thousands of entries.
    pub fn decode(text: &str) -> Result<Request, (RequestError, Option<Value>)> {
        let bad = |detail: &str| (RequestError::with(ErrorCode::BadRequest, detail), None);
        let mut body = match serde_json::from_str::<KnownFields>(text) {
            Ok(KnownFields(Some(map))) => map,
            Ok(KnownFields(None)) => return Err(bad("expected a JSON object")),
            Err(_) => return Err(bad("invalid JSON")),
        };
        let req_id = match body.remove("req_id") {
            Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
            _ => None,
        };
        match body.remove("type") {
            Some(Value::String(kind)) => Ok(Request { kind, req_id, body }),
            _ => Err((
                RequestError::with(ErrorCode::BadRequest, "missing string field \"type\""),
                req_id,
            )),
        }
    }

    /// A non-empty string field. Strings with NUL characters are refused
    /// (PostgreSQL cannot store them).
    pub fn str(&self, name: &str) -> Result<Option<&str>, RequestError> {
        match self.body.get(name) {
            Some(Value::String(s)) if s.contains('\0') => Err(RequestError::with(
                ErrorCode::BadRequest,
                format!("\"{name}\" contains a NUL character"),
            )),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            _ => Ok(None),
        }
    }

    /// The optional idempotency key of `msg`/`room_dm`: a string of 1..64
    /// characters; anything else present is `BAD_REQUEST`.
    pub fn client_id(&self) -> Result<Option<String>, RequestError> {
        match self.body.get("client_id") {
            None => Ok(None),
            Some(Value::String(s))
                if !s.is_empty() && !s.contains('\0') && s.chars().count() <= 64 =>
            {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(RequestError::with(
                ErrorCode::BadRequest,
                "\"client_id\" must be a string of 1 to 64 characters",
            )),
        }
    }

    /// An entry id (`id`, `read`'s and `edit`'s target): a required integer.
    pub fn entry_id(&self) -> Result<i64, RequestError> {
        self.int("id")?
            .ok_or_else(|| RequestError::with(ErrorCode::BadRequest, "\"id\" is required"))
    }

    /// The room id, from `room_id` or the older `room`.
    pub fn room_id(&self) -> Result<Option<&str>, RequestError> {
        match self.str("room_id")? {
            Some(r) => Ok(Some(r)),
            None => self.str("room"),
        }
    }

    /// An integer field (numbers, or strings of digits as older clients send).
    pub fn int(&self, name: &str) -> Result<Option<i64>, RequestError> {
        let bad = || {
            RequestError::with(
                ErrorCode::BadRequest,
                format!("\"{name}\" must be a number"),
            )
        };
        match self.body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or_else(bad),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }
}

/// An event under construction: `type` and `ts` are set, fields are added, and it
/// is serialized once by [`Event::frame`] / [`Event::shared`].
pub struct Event(Map<String, Value>);

impl Event {
    pub fn new(kind: &str) -> Event {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(kind.into()));
        m.insert("ts".into(), Value::String(crate::time::now_iso()));
        Event(m)
    }

    /// The `error` event.
    pub fn error(err: &RequestError) -> Event {
        let e = Event::new("error").with("code", err.code.as_str());
        match &err.detail {
            Some(d) => e.with("detail", d.as_str()),
            None => e,
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Echoes a request's `req_id`, if it had one.
    pub fn reply_to(mut self, req_id: &Option<Value>) -> Event {
        if let Some(id) = req_id {
            self.0.insert("req_id".into(), id.clone());
        }
        self
    }

    pub fn json(&self) -> String {
        serde_json::to_string(&self.0).expect("a JSON map always serializes")
    }

    /// The event serialized with a `req_id` added, from its serialization
    /// without: the sender's echo of a fan-out costs a copy, not a second encode.
    pub fn json_with_req_id(json: &str, req_id: &Value) -> String {
        let body = json.strip_suffix('}').unwrap_or(json);
        let sep = if body.len() > 1 { "," } else { "" };
        format!("{body}{sep}\"req_id\":{req_id}}}")
    }

    /// One text frame holding the event.
    pub fn frame(&self) -> Vec<u8> {
        ws::text_frame(self.json().as_bytes())
    }

    /// The frame, shareable across many output queues.
    pub fn shared(&self) -> Arc<[u8]> {
        self.frame().into()
    }
}

/// A `chat_logs` row as a `history` item (and a cached one).
pub fn history_item(e: &crate::db::jobs::ChatEntry) -> Value {
    let mut v = serde_json::json!({
        "id": e.id,
        "ts": crate::time::format_iso(e.ts),
        "kind": e.kind,
        "room": e.room,
        "from": e.from,
        "from_nickname": e.from_nickname,
        "text": e.text,
    });
    if let Some(to) = &e.to {
        v["to"] = Value::String(to.clone());
    }
    if let Some(c) = &e.client_id {
        v["client_id"] = Value::String(c.clone());
    }
    if e.deleted {
        v["deleted"] = Value::Bool(true);
        if let Some(by) = &e.deleted_by {
            v["deleted_by"] = Value::String(by.clone());
        }
    } else if let Some(at) = e.edited_at {
        v["edited_at"] = Value::String(crate::time::format_iso(at));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_are_bad_request() {
        for bad in ["not json", "[1,2]", "{}", "{\"type\": 5}", "\"x\""] {
            let (e, _) = Request::decode(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
        }
        let (_, id) = Request::decode("{\"req_id\": 7}").unwrap_err();
        assert_eq!(id, Some(Value::from(7)));
    }

    #[test]
    fn fields() {
        let r = Request::decode(
            r#"{"type":"history","room":"r_1","limit":"5","req_id":"a","text":"x\u0000","junk":[1,{"a":2}]}"#,
        )
        .unwrap();
        assert_eq!(r.kind, "history");
        assert_eq!(r.req_id, Some(Value::from("a")));
        assert_eq!(r.room_id().unwrap(), Some("r_1"));
        assert_eq!(r.int("limit").unwrap(), Some(5));
        assert!(r.str("text").is_err());
        assert_eq!(r.str("missing").unwrap(), None);
        // Unknown fields are skipped, not kept.
        assert!(!r.body.contains_key("junk"));
    }

    #[test]
    fn req_id_spliced_into_a_serialized_event() {
        let e = Event::new("message").with("id", 5);
        let j = Event::json_with_req_id(&e.json(), &Value::from("a\"b"));
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["req_id"], "a\"b");
        assert_eq!(v["id"], 5);
    }

    #[test]
    fn client_id_forms() {
        let ok = Request::decode(r#"{"type":"msg","client_id":"abc"}"#).unwrap();
        assert_eq!(ok.client_id().unwrap().as_deref(), Some("abc"));
        let none = Request::decode(r#"{"type":"msg"}"#).unwrap();
        assert_eq!(none.client_id().unwrap(), None);
        let long = format!(r#"{{"type":"msg","client_id":"{}"}}"#, "x".repeat(65));
        for bad in [
            r#"{"type":"msg","client_id":""}"#,
            r#"{"type":"msg","client_id":5}"#,
            r#"{"type":"msg","client_id":null}"#,
            long.as_str(),
        ] {
            let r = Request::decode(bad).unwrap();
            assert_eq!(
                r.client_id().unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn event_has_type_ts_and_req_id() {
        let e = Event::new("join_ack")
            .with("status", "ALREADY")
            .reply_to(&Some(Value::from(3)));
        let v: Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["type"], "join_ack");
        assert_eq!(v["req_id"], 3);
        assert!(v["ts"].as_str().unwrap().ends_with("+00:00"));
    }
}

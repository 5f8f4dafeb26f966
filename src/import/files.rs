//! The three files of the JSON-era server that an import reads.

pub const USERS_FILE: &str = "users.json";
pub const FRIENDS_FILE: &str = "friends_state.json";
pub const CHAT_FILE: &str = "chat_state.json";

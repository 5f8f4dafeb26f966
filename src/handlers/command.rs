//! Every request type the protocol knows, as one table: [`Command`]. Adding a
//! request is a file of its family (a struct that parses and applies itself,
//! and completes its own jobs) plus one line here and one in
//! `completion::on_outcome` for each outcome it adds.

use super::blocks;
use super::ctx::Ctx;
use super::dm;
use super::edits;
use super::friends;
use super::history;
use super::invites;
use super::members;
use super::messages;
use super::moderation;
use super::presence;
use super::reads;
use super::resume;
use super::room_admin;
use super::rooms;
use super::tokens;
use super::typing;
use crate::hub::Hub;
use crate::protocol::{ErrorCode, Request, RequestError};
use crate::ticket::Hold;

/// A decoded WebSocket request: every type the protocol knows, each parsed from
/// the request's fields by its own module and applied to the hub there.
pub enum Command {
    CreateRoom(rooms::CreateRoom),
    Join(rooms::Join),
    Leave(rooms::Leave),
    MyRooms,
    Msg(messages::Msg),
    RoomDm(dm::RoomDm),
    History(history::History),
    Follow(friends::Follow),
    Unfollow(friends::Unfollow),
    FollowingList,
    FollowersList,
    GetOnlineFriends,
    PresenceSubscribe,
    PresenceUnsubscribe,
    RoomMembers(members::RoomMembers),
    RoomMembersUnwatch(members::Unwatch),
    Typing(typing::Typing),
    Read(reads::Read),
    Edit(edits::Edit),
    Resume(resume::Resume),
    RefreshToken,
    Auth(tokens::Auth),
    Block(blocks::Block),
    Unblock(blocks::Unblock),
    BlockedList,
    RoomInfo(room_admin::RoomInfo),
    RoomUpdate(room_admin::RoomUpdate),
    SetRole(room_admin::SetRole),
    Invite(invites::InviteUser),
    MyInvites,
    DeclineInvite(invites::Decline),
    Remove(moderation::Remove),
    Bans(moderation::Bans),
}

impl Command {
    /// How this request's job holds back later requests of its connection.
    /// `msg` and `room_dm` (with or without `client_id`) may pipeline; `edit`,
    /// `delete`, `read` and `resume` must see every earlier write of the
    /// connection. `typing` starts like a message: after earlier membership
    /// changes (they are exclusive), but without waiting for messages still being
    /// written — it submits no job, so it holds nothing back, and a sender who
    /// types between messages would otherwise stall its own pipeline once a
    /// second. `refresh_token` and `auth`, answered from memory, are rare.
    pub fn hold(&self) -> Hold {
        match self {
            Command::Msg(_) | Command::RoomDm(_) | Command::Typing(_) => Hold::Stream,
            _ => Hold::Exclusive,
        }
    }

    /// Parses a request by its `type`; unknown types are `UNKNOWN_TYPE`.
    pub fn parse(req: &Request) -> Result<Command, RequestError> {
        Ok(match req.kind.as_str() {
            "create_room" => Command::CreateRoom(rooms::CreateRoom::parse(req)?),
            "join" => Command::Join(rooms::Join::parse(req)?),
            "leave" => Command::Leave(rooms::Leave::parse(req)?),
            "my_rooms" => Command::MyRooms,
            "msg" => Command::Msg(messages::Msg::parse(req)?),
            "room_dm" => Command::RoomDm(dm::RoomDm::parse(req)?),
            "history" => Command::History(history::History::parse(req)?),
            "friend_follow" => Command::Follow(friends::Follow::parse(req)?),
            "friend_unfollow" => Command::Unfollow(friends::Unfollow::parse(req)?),
            "following_list" => Command::FollowingList,
            "followers_list" => Command::FollowersList,
            "get_online_friends" => Command::GetOnlineFriends,
            "presence_friends_subscribe" => Command::PresenceSubscribe,
            "presence_friends_unsubscribe" => Command::PresenceUnsubscribe,
            "room_members" => Command::RoomMembers(members::RoomMembers::parse(req)?),
            "room_members_unwatch" => Command::RoomMembersUnwatch(members::Unwatch::parse(req)?),
            "typing" => Command::Typing(typing::Typing::parse(req)?),
            "read" => Command::Read(reads::Read::parse(req)?),
            "edit" => Command::Edit(edits::Edit::parse_edit(req)?),
            "delete" => Command::Edit(edits::Edit::parse_delete(req)?),
            "resume" => Command::Resume(resume::Resume::parse(req)?),
            "refresh_token" => Command::RefreshToken,
            "auth" => Command::Auth(tokens::Auth::parse(req)?),
            "block" => Command::Block(blocks::Block::parse(req)?),
            "unblock" => Command::Unblock(blocks::Unblock::parse(req)?),
            "blocked_list" => Command::BlockedList,
            "room_info" => Command::RoomInfo(room_admin::RoomInfo::parse(req)?),
            "room_update" => Command::RoomUpdate(room_admin::RoomUpdate::parse(req)?),
            "set_role" => Command::SetRole(room_admin::SetRole::parse_set_role(req)?),
            "transfer_owner" => Command::SetRole(room_admin::SetRole::parse_transfer(req)?),
            "invite" => Command::Invite(invites::InviteUser::parse(req)?),
            "my_invites" => Command::MyInvites,
            "decline_invite" => Command::DeclineInvite(invites::Decline::parse(req)?),
            "kick" => Command::Remove(moderation::Remove::parse(req, false)?),
            "ban" => Command::Remove(moderation::Remove::parse(req, true)?),
            "unban" => Command::Bans(moderation::Bans::parse_unban(req)?),
            "room_bans" => Command::Bans(moderation::Bans::parse_list(req)?),
            other => {
                return Err(RequestError::with(
                    ErrorCode::UnknownType,
                    format!("unknown request type {other:?}"),
                ))
            }
        })
    }

    pub fn apply(self, hub: &mut Hub, cx: &Ctx) -> Result<(), RequestError> {
        match self {
            Command::CreateRoom(c) => c.apply(hub, cx),
            Command::Join(c) => c.apply(hub, cx),
            Command::Leave(c) => c.apply(hub, cx),
            Command::MyRooms => rooms::my_rooms(hub, cx),
            Command::Msg(c) => c.apply(hub, cx),
            Command::RoomDm(c) => c.apply(hub, cx),
            Command::History(c) => c.apply(hub, cx),
            Command::Follow(c) => c.apply(hub, cx),
            Command::Unfollow(c) => c.apply(hub, cx),
            Command::FollowingList => friends::following_list(hub, cx),
            Command::FollowersList => friends::followers_list(hub, cx),
            Command::GetOnlineFriends => presence::get_online_friends(hub, cx),
            Command::PresenceSubscribe => presence::subscribe(hub, cx),
            Command::PresenceUnsubscribe => presence::unsubscribe(hub, cx),
            Command::RoomMembers(c) => c.apply(hub, cx),
            Command::RoomMembersUnwatch(c) => c.apply(hub, cx),
            Command::Typing(c) => c.apply(hub, cx),
            Command::Read(c) => c.apply(hub, cx),
            Command::Edit(c) => c.apply(hub, cx),
            Command::Resume(c) => c.apply(hub, cx),
            Command::RefreshToken => tokens::refresh(hub, cx),
            Command::Auth(c) => c.apply(hub, cx),
            Command::Block(c) => c.apply(hub, cx),
            Command::Unblock(c) => c.apply(hub, cx),
            Command::BlockedList => blocks::blocked_list(hub, cx),
            Command::RoomInfo(c) => c.apply(hub, cx),
            Command::RoomUpdate(c) => c.apply(hub, cx),
            Command::SetRole(c) => c.apply(hub, cx),
            Command::Invite(c) => c.apply(hub, cx),
            Command::MyInvites => invites::my_invites(hub, cx),
            Command::DeclineInvite(c) => c.apply(hub, cx),
            Command::Remove(c) => c.apply(hub, cx),
            Command::Bans(c) => c.apply(hub, cx),
        }
    }
}

/// Decodes a text frame as the loop does, up to (not including) applying it:
/// what the fuzz target and its regression corpus exercise.
pub fn decode_frame(text: &str) -> Result<Command, RequestError> {
    let req = Request::decode(text).map_err(|(e, _)| e)?;
    let cmd = Command::parse(&req)?;
    // The text checks `msg`/`room_dm` make in `apply`, without a hub.
    if matches!(cmd, Command::Msg(_) | Command::RoomDm(_)) {
        messages::check_text(&req)?;
    }
    Ok(cmd)
}

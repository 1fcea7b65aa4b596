//! The event model: what producers put in the rings (`RawEvent`, no strings, raw
//! term words resolved later by a `Resolver`) and what is stored (`StoredEvent`,
//! encoded with rmp-serde; terms are kept as Erlang external term format bytes).

use serde::{Deserialize, Serialize};

/// The eight event types of the public API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventType {
    FunctionEntry = 1,
    FunctionExit = 2,
    MessageSend = 3,
    MessageReceive = 4,
    StateChange = 5,
    ProcessSpawn = 6,
    ProcessExit = 7,
    Error = 8,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::FunctionEntry,
        EventType::FunctionExit,
        EventType::MessageSend,
        EventType::MessageReceive,
        EventType::StateChange,
        EventType::ProcessSpawn,
        EventType::ProcessExit,
        EventType::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::FunctionEntry => "function_entry",
            EventType::FunctionExit => "function_exit",
            EventType::MessageSend => "message_send",
            EventType::MessageReceive => "message_receive",
            EventType::StateChange => "state_change",
            EventType::ProcessSpawn => "process_spawn",
            EventType::ProcessExit => "process_exit",
            EventType::Error => "error",
        }
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn from_u8(v: u8) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| *t as u8 == v)
    }

    /// Critical events survive the emergency backpressure level unsampled.
    pub fn is_critical(self) -> bool {
        matches!(
            self,
            EventType::Error
                | EventType::ProcessSpawn
                | EventType::ProcessExit
                | EventType::StateChange
        )
    }
}

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[repr(u8)]
pub enum Source {
    #[default]
    Runtime = 0,
    Tracer = 1,
    /// OTP's debug hooks (`:sys.install/2`), by `Causeway.watch/2`.
    Watch = 2,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Runtime => "runtime",
            Source::Tracer => "tracer",
            Source::Watch => "watch",
        }
    }
}

/// A shared, immutable name (node, module, function): events read back from
/// the store share one allocation per distinct name.
pub type Name = std::sync::Arc<str>;

/// A process identifier made independent of the VM that produced it:
/// node name, number, serial and creation (the fields of `NEW_PID_EXT`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct PidRec {
    pub node: Name,
    pub id: u32,
    pub serial: u32,
    pub creation: u32,
}

impl PidRec {
    /// The 8-byte key used by the pid indexes (number, serial).
    pub fn key(&self) -> [u8; 8] {
        let mut k = [0u8; 8];
        k[..4].copy_from_slice(&self.id.to_be_bytes());
        k[4..].copy_from_slice(&self.serial.to_be_bytes());
        k
    }
}

impl std::fmt::Display for PidRec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}.{}.{}>@{}", 0, self.id, self.serial, self.node)
    }
}

/// A pid as captured: a local pid is an immediate term word (valid for the life of
/// the VM); anything else is kept as its external term format bytes (behind a
/// thin pointer: remote pids are rare, and the slot stays small).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum RawPid {
    #[default]
    None,
    Local(u64),
    External(Box<Vec<u8>>),
}

/// What a producer writes into a ring: fixed fields plus one ETF payload.
/// Atoms and pids are raw term words, turned into names by the writer's `Resolver`.
///
/// Kept to 128 bytes (a test checks): a move of up to 128 bytes compiles to a
/// few vector moves, a larger one to a `memcpy` call, and an event is moved
/// several times on its way into a slot (measured: 160 bytes cost ~12% of a
/// capture). What can be derived is not carried: the wall time (monotonic time
/// plus the VM's time offset, added by the writer) and the call id (an entry's
/// own id, an exit's parent).
#[derive(Clone, Debug, Default)]
pub struct RawEvent {
    pub id: u64,
    pub kind: Option<EventType>,
    /// Erlang monotonic time in nanoseconds at capture.
    pub mono_ns: i64,
    /// The process the event is about (raw local pid word).
    pub pid: u64,
    /// Atom words of a function's module and name; for a send to a
    /// registered name, the node it was addressed on (0: a local name) and
    /// the name (see `StoredEvent::module`).
    pub module: u64,
    pub function: u64,
    pub arity: u32,
    /// An entry's parent call (or cause), an exit's own entry, another
    /// event's cause.
    pub parent_id: u64,
    /// How the capture-time parent relates to this event.
    pub parent_link: Option<LinkKind>,
    /// The other process: receiver of a send, sender of a receive (when known),
    /// child of a spawn.
    pub peer: RawPid,
    pub data: crate::etf::Payload,
    pub source: Source,
}

impl crate::mpmc::WriteEmpty for RawEvent {
    /// `RawEvent::default()`, written field by field where it will live.
    #[inline(always)]
    unsafe fn write_empty(p: *mut RawEvent) {
        use std::ptr::addr_of_mut;
        // names every field: adding one without writing it below does not compile
        #[allow(dead_code)]
        fn all_fields(e: RawEvent) {
            let RawEvent {
                id: _,
                kind: _,
                mono_ns: _,
                pid: _,
                module: _,
                function: _,
                arity: _,
                parent_id: _,
                parent_link: _,
                peer: _,
                data: _,
                source: _,
            } = e;
        }
        unsafe {
            addr_of_mut!((*p).id).write(0);
            addr_of_mut!((*p).kind).write(None);
            addr_of_mut!((*p).mono_ns).write(0);
            addr_of_mut!((*p).pid).write(0);
            addr_of_mut!((*p).module).write(0);
            addr_of_mut!((*p).function).write(0);
            addr_of_mut!((*p).arity).write(0);
            addr_of_mut!((*p).parent_id).write(0);
            addr_of_mut!((*p).parent_link).write(None);
            addr_of_mut!((*p).peer).write(RawPid::None);
            addr_of_mut!((*p).data).write(crate::etf::Payload::new());
            addr_of_mut!((*p).source).write(Source::Runtime);
        }
    }
}

impl RawEvent {
    pub fn kind(&self) -> EventType {
        self.kind.unwrap_or(EventType::Error)
    }

    /// The call an entry or exit belongs to (0 for other events).
    #[inline]
    pub fn call_id(&self) -> u64 {
        match self.kind {
            Some(EventType::FunctionEntry) => self.id,
            Some(EventType::FunctionExit) => self.parent_id,
            _ => 0,
        }
    }

    /// Bytes this event holds outside its own struct (a payload too big to
    /// be inline, a remote pid's bytes).
    #[inline]
    pub fn heap_bytes(&self) -> u64 {
        let data = if self.data.spilled() {
            self.data.capacity() as u64
        } else {
            0
        };
        match &self.peer {
            RawPid::External(b) => data + b.capacity() as u64,
            _ => data,
        }
    }
}

/// An event as the store gives it back (names resolved). Its disk form is
/// `store::DiskEvent` (names interned, times as deltas).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub id: u64,
    pub kind: EventType,
    pub mono_ns: i64,
    pub wall_ns: i64,
    pub pid: PidRec,
    pub call_id: u64,
    pub parent_id: u64,
    /// How this event relates to `parent_id` (known at capture).
    pub parent_link: Option<LinkKind>,
    /// A function's module. For a `MessageSend` to a registered name (no
    /// `peer`): the node the name was addressed on (`{name, node}`), or
    /// none for a local name.
    pub module: Option<Name>,
    /// A function's name. For a `MessageSend` to a registered name: the name.
    pub function: Option<Name>,
    pub arity: u32,
    pub peer: Option<PidRec>,
    pub data: Vec<u8>,
    pub source: Source,
}

impl StoredEvent {
    /// Whether `module`, `function` and `arity` name a function (they name
    /// a send's registered receiver on a `MessageSend`).
    pub fn has_mfa(&self) -> bool {
        self.kind != EventType::MessageSend && self.module.is_some()
    }

    /// The key a send and its receive share (see `message_key`).
    pub fn msg_hash(&self) -> u64 {
        crate::message_key::message_key(&self.data)
    }
}

/// Causal link kinds. Each link is stored in both directions; the name is read
/// from the event that holds it ("this exit *completes* that entry").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum LinkKind {
    /// exit → its entry
    Completes = 1,
    /// entry → its exit
    CompletedBy = 2,
    /// nested entry → the caller's entry
    CalledFrom = 3,
    /// caller's entry → nested entry
    Calls = 4,
    /// receive → the matching send
    Receives = 5,
    /// send → the matching receive
    ReceivedBy = 6,
    /// state change / error / spawn → the message or call that caused it
    CausedBy = 7,
    /// message or call → what it caused
    Causes = 8,
    /// process exit → the spawn of that process
    ExitOf = 9,
    /// spawn → the exit of the spawned process
    ExitedBy = 10,
}

impl LinkKind {
    pub const ALL: [LinkKind; 10] = [
        LinkKind::Completes,
        LinkKind::CompletedBy,
        LinkKind::CalledFrom,
        LinkKind::Calls,
        LinkKind::Receives,
        LinkKind::ReceivedBy,
        LinkKind::CausedBy,
        LinkKind::Causes,
        LinkKind::ExitOf,
        LinkKind::ExitedBy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Completes => "completes",
            LinkKind::CompletedBy => "completed_by",
            LinkKind::CalledFrom => "called_from",
            LinkKind::Calls => "calls",
            LinkKind::Receives => "receives",
            LinkKind::ReceivedBy => "received_by",
            LinkKind::CausedBy => "caused_by",
            LinkKind::Causes => "causes",
            LinkKind::ExitOf => "exit_of",
            LinkKind::ExitedBy => "exited_by",
        }
    }

    pub fn from_u8(v: u8) -> Option<LinkKind> {
        LinkKind::ALL.into_iter().find(|k| *k as u8 == v)
    }

    pub fn reverse(self) -> LinkKind {
        match self {
            LinkKind::Completes => LinkKind::CompletedBy,
            LinkKind::CompletedBy => LinkKind::Completes,
            LinkKind::CalledFrom => LinkKind::Calls,
            LinkKind::Calls => LinkKind::CalledFrom,
            LinkKind::Receives => LinkKind::ReceivedBy,
            LinkKind::ReceivedBy => LinkKind::Receives,
            LinkKind::CausedBy => LinkKind::Causes,
            LinkKind::Causes => LinkKind::CausedBy,
            LinkKind::ExitOf => LinkKind::ExitedBy,
            LinkKind::ExitedBy => LinkKind::ExitOf,
        }
    }

    /// The direction that points from an effect back to its cause.
    pub fn is_backward(self) -> bool {
        matches!(
            self,
            LinkKind::Completes
                | LinkKind::CalledFrom
                | LinkKind::Receives
                | LinkKind::CausedBy
                | LinkKind::ExitOf
        )
    }
}

/// A link from one event to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Link {
    pub from: u64,
    pub kind: LinkKind,
    pub to: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_kinds_reverse_and_round_trip() {
        for k in LinkKind::ALL {
            assert_eq!(k.reverse().reverse(), k);
            assert_ne!(k.is_backward(), k.reverse().is_backward());
            assert_eq!(LinkKind::from_u8(k as u8), Some(k));
        }
        for t in EventType::ALL {
            assert_eq!(EventType::from_name(t.name()), Some(t));
            assert_eq!(EventType::from_u8(t as u8), Some(t));
        }
    }

    #[test]
    fn a_raw_event_fits_in_128_bytes() {
        // larger, and every move of one on the capture path becomes a memcpy call
        assert!(std::mem::size_of::<RawEvent>() <= 128);
        assert_eq!(std::mem::size_of::<RawPid>(), 16);
    }

    #[test]
    fn an_event_written_empty_is_the_default_event() {
        use crate::mpmc::WriteEmpty;
        let mut slot = std::mem::MaybeUninit::<RawEvent>::uninit();
        // SAFETY: a valid place for one event, written before it is read
        let e = unsafe {
            RawEvent::write_empty(slot.as_mut_ptr());
            slot.assume_init()
        };
        assert_eq!(format!("{e:?}"), format!("{:?}", RawEvent::default()));
        assert!(!e.data.spilled());
    }

    #[test]
    fn call_ids_are_derived() {
        let mut e = RawEvent {
            id: 7,
            parent_id: 3,
            kind: Some(EventType::FunctionEntry),
            ..Default::default()
        };
        assert_eq!(e.call_id(), 7);
        e.kind = Some(EventType::FunctionExit);
        assert_eq!(e.call_id(), 3);
        e.kind = Some(EventType::MessageSend);
        assert_eq!(e.call_id(), 0);
    }
}

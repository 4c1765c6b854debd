//! Log events: what the runner reports (run start and end, hook start and
//! end, rollback, messages), rendered as text lines or JSON objects, and sent
//! to the log file, syslog or the systemd journal.

use std::os::unix::net::UnixDatagram;

use nix::syslog::{Facility, LogFlags, Priority, Severity};

use crate::log::json::{self, Object};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }

    /// syslog(3) and journal priority.
    fn severity(self) -> Severity {
        match self {
            Level::Info => Severity::LOG_INFO,
            Level::Warning => Severity::LOG_WARNING,
            Level::Error => Severity::LOG_ERR,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Num(n as f64)
    }
}
impl From<i32> for Value {
    fn from(n: i32) -> Value {
        Value::Num(n as f64)
    }
}
impl From<u32> for Value {
    fn from(n: u32) -> Value {
        Value::Num(n as f64)
    }
}

/// One event. `message` is the text line (the stock line where there is
/// one); `fields` are what JSON and the journal get on top.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: &'static str,
    pub level: Level,
    pub message: String,
    pub fields: Vec<(&'static str, Value)>,
    /// The text line has no level prefix: a line in the stock script's form,
    /// which monitoring matches as it is.
    pub stock_form: bool,
}

impl Event {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Event {
        Event {
            kind,
            level: Level::Info,
            message: message.into(),
            fields: Vec::new(),
            stock_form: false,
        }
    }

    /// Its text line in the stock script's form: no `error: ` before it
    /// (the level still counts for syslog, the journal and JSON).
    pub fn in_stock_form(mut self) -> Event {
        self.stock_form = true;
        self
    }

    /// A plain message line.
    pub fn message(message: impl Into<String>) -> Event {
        Event::new("message", message)
    }

    pub fn level(mut self, level: Level) -> Event {
        self.level = level;
        self
    }

    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Event {
        self.fields.push((key, value.into()));
        self
    }

    /// The text line, `<date>: <message>`: one line whatever the message
    /// holds (a control character in it, from a name someone chose, is
    /// escaped as names are), so no caller can write a line that is not the
    /// runner's own.
    pub fn text(&self) -> String {
        let prefix = match self.level {
            _ if self.stock_form => "",
            Level::Info => "",
            Level::Warning => "warning: ",
            Level::Error => "error: ",
        };
        let message = crate::text::escape_line(self.message.as_bytes());
        format!("{}: {prefix}{message}\n", timestamp())
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let mut o = Object::new()
            .str("time", &timestamp())
            .str("event", self.kind)
            .str("level", self.level.name());
        for (k, v) in &self.fields {
            o = match v {
                Value::Str(s) => o.str(k, s),
                Value::Num(n) => o.num(k, *n),
                Value::Bool(b) => o.bool(k, *b),
            };
        }
        o.str("message", &self.message).finish() + "\n"
    }

    /// For syslog: the message with the event kind.
    fn syslog(&self) {
        let _ = nix::syslog::openlog(
            Some(c"fsfreeze-hook"),
            LogFlags::LOG_PID,
            Facility::LOG_DAEMON,
        );
        let pri = Priority::new(self.level.severity(), Facility::LOG_DAEMON);
        let _ = nix::syslog::syslog(pri, &self.message.as_str());
    }

    /// For journald's native protocol: one datagram of
    /// `FIELD=value` lines (values without a newline in this use).
    fn journald_datagram(&self) -> Vec<u8> {
        let mut d = format!(
            "MESSAGE={}\nPRIORITY={}\nSYSLOG_IDENTIFIER=fsfreeze-hook\nSYSLOG_PID={}\nFSFREEZE_EVENT={}\n",
            self.message.replace('\n', " "),
            self.level.severity() as i32,
            std::process::id(),
            self.kind
        );
        for (k, v) in &self.fields {
            let value = match v {
                Value::Str(s) => s.replace('\n', " "),
                Value::Num(n) => format!("{n}"),
                Value::Bool(b) => b.to_string(),
            };
            d.push_str(&format!("FSFREEZE_{}={value}\n", k.to_ascii_uppercase()));
        }
        d.into_bytes()
    }
}

/// journald's native socket.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Sends `event` to syslog. Never fails the caller.
pub fn to_syslog(event: &Event) {
    event.syslog();
}

/// Sends `event` to journald; false when it cannot be reached.
pub fn to_journald(event: &Event) -> bool {
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    sock.send_to(&event.journald_datagram(), JOURNALD_SOCKET)
        .is_ok()
}

/// One line of a hook's output as a JSON event.
pub fn output_json(hook: &str, line: &[u8]) -> String {
    Object::new()
        .str("time", &timestamp())
        .str("event", "output")
        .str("level", "info")
        .str("hook", hook)
        .raw("line", json::string(&String::from_utf8_lossy(line)))
        .finish()
        + "\n"
}

/// Local time with milliseconds and offset: sortable, unambiguous across
/// time-zone changes.
pub fn timestamp() -> String {
    chrono::Local::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string()
}

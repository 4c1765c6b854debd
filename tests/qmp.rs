//! A client of the guest agent's protocol (QMP: one JSON command and one
//! JSON answer per line) over a unix socket, for the qemu-ga and VM tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    log: PathBuf,
}

impl Qmp {
    /// Connects; every answer must come within `timeout`, or the test fails
    /// showing `log` (the agent's log or the guest's console).
    pub fn connect(socket: &Path, timeout: Duration, log: &Path) -> Qmp {
        // The socket file appears at bind(), before listen(): a refused
        // connection right then is retried (10 s at most).
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < until =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{}: {e}", socket.display()),
            }
        };
        stream.set_read_timeout(Some(timeout)).unwrap();
        Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            log: log.to_path_buf(),
        }
    }

    /// One command: Ok(its return value) or Err(the error's description).
    pub fn call(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let msg = json!({ "execute": command, "arguments": arguments });
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        if let Err(e) = self.reader.read_line(&mut line) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("{command}: no answer from the guest agent: {e}; its log:\n{log}");
        }
        let v: Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        match v.get("return") {
            Some(r) => Ok(r.clone()),
            None => Err(v["error"]["desc"].as_str().unwrap_or("").to_string()),
        }
    }

    /// guest-sync-delimited, as management layers start a session: a 0xFF
    /// byte flushes the agent's parser, and the answer starts with 0xFF;
    /// whatever comes before it is stale. Retried until `within` passes.
    pub fn sync_delimited(&mut self, within: Duration) {
        let id = 4711;
        let deadline = Instant::now() + within;
        loop {
            self.writer.write_all(b"\xff").unwrap();
            let msg = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
            self.writer
                .write_all(format!("{msg}\n").as_bytes())
                .unwrap();
            let mut byte = [0u8; 1];
            while self.reader.read_exact(&mut byte).is_ok() && byte[0] != 0xff {}
            let mut line = String::new();
            let _ = self.reader.read_line(&mut line);
            if serde_json::from_str::<Value>(line.trim()).is_ok_and(|v| v["return"] == id) {
                return;
            }
            assert!(Instant::now() < deadline, "no sync with the guest agent");
        }
    }
}

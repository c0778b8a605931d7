//! Log lines of a daemonized mount go to syslog (the journal on systemd machines), since a
//! daemon has no terminal. One tracing event becomes one syslog record at its level.

use std::ffi::CString;
use std::io::Write;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

pub struct Syslog;

impl Syslog {
    pub fn open() -> Syslog {
        static IDENT: &[u8] = b"envfs\0";
        // SAFETY: IDENT is a static NUL-terminated string, as openlog requires.
        unsafe { libc::openlog(IDENT.as_ptr().cast(), libc::LOG_PID, libc::LOG_DAEMON) };
        Syslog
    }
}

pub struct Record {
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl Write for Record {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let text: Vec<u8> = self.buf.iter().copied().filter(|&b| b != 0).collect();
        if let Ok(msg) = CString::new(text) {
            // SAFETY: "%s" with one valid C string argument.
            unsafe { libc::syslog(self.priority, c"%s".as_ptr(), msg.as_ptr()) };
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = Record;

    fn make_writer(&'a self) -> Record {
        Record {
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Record {
        let priority = match *meta.level() {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        Record {
            priority,
            buf: Vec::new(),
        }
    }
}

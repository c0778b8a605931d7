//! A local KMS-compatible server (moto) behind a fault-injecting, request-counting proxy.
//! Faults happen on the wire, so the SDK's real retry code and envfs' real cache run.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with the next requests.
#[derive(Clone, Debug)]
pub enum Fault {
    Pass,
    /// Forward, after a delay.
    Latency(Duration),
    /// Answer `op` requests with a KMS error instead of forwarding, `times` times (None:
    /// until changed).
    Error {
        op: Option<String>,
        status: u16,
        code: String,
        times: Option<usize>,
    },
    /// Close every connection without answering (KMS unreachable).
    Drop,
    /// Forward the first `pass` `op` requests, then answer every later one with a KMS
    /// error (e.g. a vault that opens, then files whose keys are refused).
    ErrorAfter {
        op: String,
        pass: usize,
        status: u16,
        code: String,
    },
}

pub struct Kms {
    server: Child,
    pub upstream: u16,
    pub proxy: u16,
    fault: Arc<Mutex<Fault>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// The Python with moto: `$ENVFS_TEST_PYTHON`, else the project's virtual environment that
/// scripts/setup.sh makes (`.venv/`), else `python3` on PATH.
fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ENVFS_TEST_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Kms {
    pub fn start() -> Kms {
        let upstream = free_port();
        let server = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &upstream.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python -m moto.server: run scripts/setup.sh (it installs moto into .venv/)");
        let ready = super::wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", upstream)).is_ok()
        });
        assert!(ready, "moto server did not start on port {upstream}");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let (f, c) = (fault.clone(), counts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (f, c) = (f.clone(), c.clone());
                std::thread::spawn(move || serve(conn, upstream, &f, &c));
            }
        });
        Kms {
            server,
            upstream,
            proxy,
            fault,
            counts,
        }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Requests seen per operation (GenerateDataKey, Decrypt, …) since the last reset,
    /// including ones the proxy answered with a fault.
    pub fn count(&self, op: &str) -> usize {
        self.counts.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.counts.lock().unwrap().values().sum()
    }

    pub fn reset_counts(&self) {
        self.counts.lock().unwrap().clear();
    }

    /// Environment for envfs: fake credentials, the proxy as the KMS endpoint.
    pub fn env(&self, cmd: &mut Command) {
        cmd.envs(self.vars())
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL");
    }

    /// The variables `env` sets.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            (
                "AWS_ENDPOINT_URL_KMS",
                format!("http://127.0.0.1:{}", self.proxy),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Create a KMS key with an alias (directly at the server), returning its ARN.
    pub fn create_key(&self, alias: &str) -> String {
        self.create_key_in(alias, "us-east-1")
    }

    /// The same, in another region.
    pub fn create_key_in(&self, alias: &str, region: &str) -> String {
        let script = format!(
            "import boto3\nk=boto3.client('kms',endpoint_url='http://127.0.0.1:{}',region_name='{region}',\
             aws_access_key_id='testing',aws_secret_access_key='testing')\n\
             key=k.create_key()['KeyMetadata']\nk.create_alias(AliasName='{alias}',TargetKeyId=key['KeyId'])\nprint(key['Arn'])",
            self.upstream
        );
        let out = Command::new(python())
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "create key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Kms {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Head bytes, lower-cased header map, body.
type Message = (Vec<u8>, HashMap<String, String>, Vec<u8>);

/// Read one HTTP/1.1 message head and body (Content-Length framing).
fn read_message(reader: &mut BufReader<TcpStream>) -> Option<Message> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let headers: HashMap<String, String> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some((head, headers, body))
}

fn serve(
    conn: TcpStream,
    upstream: u16,
    fault: &Mutex<Fault>,
    counts: &Mutex<HashMap<String, usize>>,
) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some((head, headers, body)) = read_message(&mut reader) {
        let op = headers
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("unknown")
            .to_string();
        *counts.lock().unwrap().entry(op.clone()).or_default() += 1;
        let action = {
            let mut f = fault.lock().unwrap();
            if let Fault::ErrorAfter {
                op: target,
                pass,
                status,
                code,
            } = &mut *f
                && *target == op
            {
                if *pass > 0 {
                    *pass -= 1;
                } else {
                    *f = Fault::Error {
                        op: Some(op.clone()),
                        status: *status,
                        code: code.clone(),
                        times: None,
                    };
                }
            }
            let action = f.clone();
            if let Fault::Error {
                op: target,
                times: Some(n),
                ..
            } = &mut *f
                && target.as_deref().is_none_or(|t| t == op)
            {
                *n -= 1;
                if *n == 0 {
                    *f = Fault::Pass;
                }
            }
            action
        };
        match action {
            Fault::Drop => return,
            Fault::Error {
                op: target,
                status,
                code,
                ..
            } if target.as_deref().is_none_or(|t| t == op) => {
                let body =
                    format!("{{\"__type\":\"{code}\",\"message\":\"injected by the test proxy\"}}");
                let resp = format!(
                    "HTTP/1.1 {status} Error\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: {code}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if writer.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            Fault::Latency(d) => std::thread::sleep(d),
            _ => {}
        }
        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        let mut up_writer = up.try_clone().unwrap();
        if up_writer
            .write_all(&head)
            .and_then(|_| up_writer.write_all(&body))
            .is_err()
        {
            return;
        }
        let mut up_reader = BufReader::new(up);
        let Some((rhead, _, rbody)) = read_message(&mut up_reader) else {
            return;
        };
        if writer
            .write_all(&rhead)
            .and_then(|_| writer.write_all(&rbody))
            .is_err()
        {
            return;
        }
    }
}

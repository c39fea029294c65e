//! Just enough of the redis protocol (RESP) for the guestbook: send a command, read a reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A reply; the guestbook reads arrays, and prints the rest (through Debug) when unexpected.
#[derive(Debug)]
#[allow(dead_code)]
pub enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<String>),
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(host: &str, port: u16) -> Result<Client, String> {
        let ip = crate::dns::resolve(host)?;
        let stream =
            TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2)).map_err(|e| format!("connect {host}:{port}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn call(&mut self, args: &[&str]) -> Result<Reply, String> {
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.writer.write_all(cmd.as_bytes()).map_err(|e| e.to_string())?;
        self.read()
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn bulk(&mut self, len: i64) -> Result<Option<String>, String> {
        if len < 0 {
            return Ok(None);
        }
        let mut buf = vec![0; len as usize + 2];
        self.reader.read_exact(&mut buf).map_err(|e| e.to_string())?;
        buf.truncate(len as usize);
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    fn read(&mut self) -> Result<Reply, String> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        match kind {
            "+" => Ok(Reply::Status(rest.to_owned())),
            "-" => Err(rest.to_owned()),
            ":" => Ok(Reply::Int(rest.parse().map_err(|_| "bad integer")?)),
            "$" => Ok(Reply::Bulk(self.bulk(rest.parse().map_err(|_| "bad length")?)?)),
            "*" => {
                let n: i64 = rest.parse().map_err(|_| "bad length")?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    let l = self.line()?;
                    let len = l.strip_prefix('$').and_then(|n| n.parse().ok()).ok_or("unsupported nested reply")?;
                    items.push(self.bulk(len)?.unwrap_or_default());
                }
                Ok(Reply::Array(items))
            }
            _ => Err(format!("unexpected reply {line:?}")),
        }
    }
}

//! SPDY/3.1 framing, the part a stream server needs (port-forward's SPDY, and exec and attach
//! of plain SPDY clients, carried in WebSocket binary messages): frames parsed from a byte stream and
//! written to one, and header blocks compressed with zlib and the protocol's dictionary. Flow
//! control is not kept: kubectl's SPDY library (spdystream) keeps none either.

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The protocol version in every control frame.
const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
/// Frames are at most this long (the length field has 24 bits).
const MAX_FRAME: usize = (1 << 24) - 1;
/// A header block may not expand beyond this (a hostile block is refused, not inflated).
const MAX_HEADERS: usize = 64 << 10;

/// The RST_STREAM status the server sends.
pub const CANCEL: u32 = 5;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("SPDY frame of version {0}: only version 3 is spoken")]
    Version(u16),
    #[error("SPDY {what} frame is too short")]
    Short { what: &'static str },
    #[error("SPDY header block: {0}")]
    Headers(String),
}

/// A frame as the server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// HEADERS: only its end of stream matters here.
    Headers {
        stream: u32,
        fin: bool,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    /// SETTINGS, WINDOW_UPDATE and frames of unknown types: ignored, as the protocol allows.
    Ignored,
}

/// Parses frames out of the bytes the client sends.
pub struct Decoder {
    buf: BytesMut,
    inflate: Decompress,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Decoder({} bytes buffered)", self.buf.len())
    }
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            inflate: Decompress::new(true),
        }
    }
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if self.buf.len() < 8 + length {
            self.buf.reserve(8 + length - self.buf.len());
            return Ok(None);
        }
        let head = self.buf.split_to(8);
        let mut body = self.buf.split_to(length).freeze();
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data { stream, fin, data: body }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let need = |n: usize, what: &'static str, body: &Bytes| if body.len() < n { Err(SpdyError::Short { what }) } else { Ok(()) };
        let frame = match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM => {
                need(10, "SYN_STREAM", &body)?;
                let stream = body.get_u32() & 0x7fff_ffff;
                body.advance(6); // associated stream, priority, slot
                let headers = self.headers(&body)?;
                Frame::SynStream { stream, fin, headers }
            }
            RST_STREAM => {
                need(8, "RST_STREAM", &body)?;
                Frame::RstStream {
                    stream: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            PING => {
                need(4, "PING", &body)?;
                Frame::Ping { id: body.get_u32() }
            }
            GOAWAY => Frame::GoAway,
            HEADERS => {
                need(4, "HEADERS", &body)?;
                let stream = body.get_u32() & 0x7fff_ffff;
                // The block must still pass through the shared decompressor.
                self.headers(&body)?;
                Frame::Headers { stream, fin }
            }
            _ => Frame::Ignored,
        };
        Ok(Some(frame))
    }

    /// Inflates a header block (one zlib stream runs through the session's blocks) and reads
    /// its name/value pairs.
    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let bad = |m: String| SpdyError::Headers(m);
        let mut out = Vec::with_capacity(block.len() * 4);
        let mut input = block;
        while !input.is_empty() {
            if out.capacity() - out.len() < 1024 {
                out.reserve(4096);
            }
            let before = self.inflate.total_in();
            match self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&dictionary()).map_err(|e| bad(e.to_string()))?;
                }
                Err(e) => return Err(bad(e.to_string())),
            }
            input = &input[(self.inflate.total_in() - before) as usize..];
            if out.len() > MAX_HEADERS {
                return Err(bad(format!("it expands beyond {MAX_HEADERS} bytes")));
            }
        }
        // Whatever zlib holds back for want of output room.
        loop {
            out.reserve(4096);
            let len = out.len();
            self.inflate
                .decompress_vec(&[], &mut out, FlushDecompress::Sync)
                .map_err(|e| bad(e.to_string()))?;
            if out.len() == len || out.len() > MAX_HEADERS {
                break;
            }
        }
        parse_pairs(&out).ok_or_else(|| bad("its name/value pairs are malformed".into()))
    }
}

fn parse_pairs(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    let take = |b: &mut &[u8]| -> Option<String> {
        if b.len() < 4 {
            return None;
        }
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let s = b.get(4..4 + n)?;
        let text = String::from_utf8_lossy(s).into_owned();
        *b = &b[4 + n..];
        Some(text)
    };
    if b.len() < 4 {
        return None;
    }
    let count = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    b = &b[4..];
    let mut pairs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut b)?;
        let value = take(&mut b)?;
        pairs.push((name.to_ascii_lowercase(), value));
    }
    Some(pairs)
}

/// Writes the server's frames.
pub struct Encoder {
    deflate: Compress,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoder")
    }
}

impl Default for Encoder {
    fn default() -> Encoder {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dictionary())
            .expect("a fresh zlib stream takes a dictionary");
        Encoder { deflate }
    }
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

impl Encoder {
    /// SYN_REPLY accepting `stream`, with no headers.
    pub fn syn_reply(&mut self, stream: u32) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        let pairs = 0u32.to_be_bytes();
        // Four bytes deflate to a few dozen: one call with room to spare sync-flushes the block,
        // so the client reads it now while the zlib stream goes on.
        let mut block = Vec::with_capacity(256);
        self.deflate
            .compress_vec(&pairs, &mut block, FlushCompress::Sync)
            .expect("compressing into memory does not fail");
        debug_assert!(block.len() < block.capacity(), "the flush completed");
        body.extend_from_slice(&block);
        control(SYN_REPLY, 0, &body)
    }

    /// DATA frames carrying `data` (split at the frame size limit), the last with `fin`.
    pub fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + data.len());
        let mut chunks = data.chunks(MAX_FRAME).peekable();
        if chunks.peek().is_none() {
            out.extend_from_slice(&stream.to_be_bytes());
            out.push(if fin { FLAG_FIN } else { 0 });
            out.extend_from_slice(&[0, 0, 0]);
            return out;
        }
        while let Some(chunk) = chunks.next() {
            out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
            out.push(if fin && chunks.peek().is_none() { FLAG_FIN } else { 0 });
            out.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(chunk);
        }
        out
    }

    pub fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&status.to_be_bytes());
        control(RST_STREAM, 0, &body)
    }

    pub fn ping(id: u32) -> Vec<u8> {
        control(PING, 0, &id.to_be_bytes())
    }
}

/// The session's reading half: the frames of the client's binary messages, in order.
pub struct Frames<S> {
    incoming: S,
    decoder: Decoder,
}

impl<S, E> Frames<S>
where
    S: futures::Stream<Item = Result<axum::extract::ws::Message, E>> + Unpin,
{
    pub fn new(incoming: S) -> Frames<S> {
        Frames {
            incoming,
            decoder: Decoder::default(),
        }
    }

    /// The next frame; None once the client closed or left.
    pub async fn next(&mut self) -> Option<Result<Frame, SpdyError>> {
        use futures::StreamExt;
        loop {
            if let Some(frame) = self.decoder.next_frame().transpose() {
                return Some(frame);
            }
            match self.incoming.next().await? {
                Ok(axum::extract::ws::Message::Binary(data)) => self.decoder.push(&data),
                Ok(axum::extract::ws::Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A frame the server sends.
#[derive(Debug)]
pub enum Out {
    Reply(u32),
    Data { stream: u32, fin: bool, data: Bytes },
    Reset(u32),
    Ping(u32),
}

/// The session's writing half: encodes the frames `out` carries, in order (replies share one
/// compression stream), into binary messages on `sink` — frames already waiting share one
/// message, up to about `batch` bytes, since SPDY rides the WebSocket as a byte stream — until
/// `out` closes; then closes the sink.
pub async fn write_frames(
    mut out: tokio::sync::mpsc::Receiver<Out>,
    mut sink: impl futures::Sink<axum::extract::ws::Message> + Unpin,
    batch: usize,
) {
    use futures::SinkExt;
    let mut encoder = Encoder::default();
    while let Some(first) = out.recv().await {
        let mut bytes = Vec::new();
        let mut next = Some(first);
        while let Some(frame) = next {
            bytes.extend(match frame {
                Out::Reply(stream) => encoder.syn_reply(stream),
                Out::Data { stream, fin, data } => Encoder::data(stream, fin, &data),
                Out::Reset(stream) => Encoder::rst_stream(stream, CANCEL),
                Out::Ping(id) => Encoder::ping(id),
            });
            next = if bytes.len() < batch { out.try_recv().ok() } else { None };
        }
        if sink.send(axum::extract::ws::Message::Binary(bytes.into())).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

/// The header-compression dictionary of SPDY/3 (draft 3.1, section 2.6.10.1): the listed words,
/// each with its length as four big-endian bytes, then the status lines, dates and media types
/// run together.
fn dictionary() -> Vec<u8> {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's header block: pairs, compressed on a zlib stream with the dictionary.
    fn client_block(deflate: &mut Compress, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (pairs.len() as u32).to_be_bytes().to_vec();
        for (n, v) in pairs {
            for s in [n, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        deflate.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
        out
    }

    fn syn_stream(deflate: &mut Compress, stream: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&client_block(deflate, pairs));
        control(SYN_STREAM, 0, &body)
    }

    #[test]
    fn the_dictionary_is_the_protocols() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // zlib names a preset dictionary by its Adler-32; SPDY/3's is 0xe3c6a7c2.
        let mut inflate = Decompress::new(true);
        let mut deflate = Compress::new(Compression::default(), true);
        assert_eq!(deflate.set_dictionary(&d).unwrap(), 0xe3c6_a7c2);
        let mut out = Vec::with_capacity(64);
        let err = inflate
            .decompress_vec(&client_block(&mut deflate, &[("a", "b")]), &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert_eq!(err.needs_dictionary(), Some(0xe3c6_a7c2));
    }

    #[test]
    fn streams_pings_and_data_are_read_across_split_input() {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(&dictionary()).unwrap();
        let mut wire = syn_stream(&mut deflate, 1, &[("streamType", "error"), ("port", "8080"), ("requestID", "0")]);
        wire.extend(syn_stream(
            &mut deflate,
            3,
            &[("streamType", "data"), ("port", "8080"), ("requestID", "0")],
        ));
        wire.extend(Encoder::data(3, false, b"hello"));
        wire.extend(Encoder::data(1, true, b""));
        wire.extend(Encoder::ping(1));
        wire.extend(Encoder::rst_stream(3, CANCEL));
        let mut d = Decoder::default();
        let mut frames = Vec::new();
        // One byte at a time: frames cut anywhere are reassembled.
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        let headers = |t: &str| {
            vec![
                ("streamtype".to_owned(), t.to_owned()),
                ("port".to_owned(), "8080".to_owned()),
                ("requestid".to_owned(), "0".to_owned()),
            ]
        };
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream: 1,
                    fin: false,
                    headers: headers("error")
                },
                Frame::SynStream {
                    stream: 3,
                    fin: false,
                    headers: headers("data")
                },
                Frame::Data {
                    stream: 3,
                    fin: false,
                    data: Bytes::from_static(b"hello")
                },
                Frame::Data {
                    stream: 1,
                    fin: true,
                    data: Bytes::new()
                },
                Frame::Ping { id: 1 },
                Frame::RstStream { stream: 3, status: CANCEL },
            ]
        );
    }

    #[test]
    fn the_servers_replies_inflate_with_the_dictionary() {
        let mut e = Encoder::default();
        let first = e.syn_reply(1);
        let second = e.syn_reply(3);
        let mut inflate = Decompress::new(true);
        for (frame, stream) in [(first, 1u32), (second, 3)] {
            assert_eq!(&frame[..4], &[0x80, 3, 0, 2]);
            assert_eq!(u32::from_be_bytes(frame[8..12].try_into().unwrap()), stream);
            let mut out = Vec::with_capacity(64);
            let block = &frame[12..];
            match inflate.decompress_vec(block, &mut out, FlushDecompress::Sync) {
                Err(e) if e.needs_dictionary().is_some() => {
                    inflate.set_dictionary(&dictionary()).unwrap();
                    let used = inflate.total_in() as usize;
                    let rest = &block[used.min(block.len())..];
                    inflate.decompress_vec(rest, &mut out, FlushDecompress::Sync).unwrap();
                }
                other => {
                    other.unwrap();
                }
            }
            assert_eq!(out, 0u32.to_be_bytes());
        }
    }

    #[test]
    fn hostile_input_is_refused() {
        let mut d = Decoder::default();
        d.push(&control(SYN_STREAM, 0, &[0, 0, 0, 1]));
        assert_eq!(d.next_frame(), Err(SpdyError::Short { what: "SYN_STREAM" }));
        let mut d = Decoder::default();
        let mut v2 = control(PING, 0, &[0, 0, 0, 1]);
        v2[1] = 2;
        d.push(&v2);
        assert_eq!(d.next_frame(), Err(SpdyError::Version(2)));
        // A block that inflates to megabytes.
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(&dictionary()).unwrap();
        let big = "x".repeat(1 << 20);
        let mut d = Decoder::default();
        d.push(&syn_stream(&mut deflate, 1, &[("a", &big)]));
        assert!(matches!(d.next_frame(), Err(SpdyError::Headers(m)) if m.contains("expands")));
    }
}

//! Accept, continued: the framing of HTTP/1 requests checked on the raw bytes, before hyper
//! parses them (rules 19 and 26).
//!
//! hyper resolves a request carrying both `Content-Length` and `Transfer-Encoding` itself
//! (chunked wins, the length is dropped, the connection closes after the answer, as RFC 9112
//! §6.1 allows) and drops a raw `#` and everything after it from the target. Neither leaves a
//! trace the service could see, yet both are what request smuggling and policy bypasses are
//! made of, and nginx refuses both. So the connection wrapper ([`super::inbound`]) has a
//! [`Tracker`] follow the message framing of what the client sends — heads parsed with
//! `httparse` (hyper's own parser), bodies skipped by their length or chunk sizes exactly as
//! hyper's decoder reads them — and when a head is ambiguous it puts a NUL into the head's
//! last line. hyper's parser then refuses the head with 400 and closes the connection: the
//! request reaches neither the service nor the app.
//!
//! It owns no decision but those two. When it meets bytes it cannot follow (an HTTP/2
//! preface, an upgraded tunnel, a head hyper will refuse anyway) it stops looking at the
//! connection and hyper's own rules apply, as they did without it.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use tokio::io::ReadBuf;

/// Appended after a head damaged in its last byte, so hyper parses (and refuses) it.
const END: &[u8] = b"\r\n\r\n";

/// Headers parsed on the stack; a configuration allowing more parses into a vector.
const STACK_HEADERS: usize = 128;

/// The limits hyper applies, so the wrapper never holds more than hyper would.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of a head kept while it arrives in pieces.
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

/// Where in the client's byte stream the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At (or inside) a request head.
    Head,
    /// Inside a body of known length: this many bytes to go.
    Body(u64),
    Chunked(Chunk),
    /// Not following any more (see the module doc).
    Off,
}

/// hyper's chunked decoder states (`proto/h1/decode.rs`), with the size carried along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
}

/// What a complete head means for the bytes after it.
enum Verdict {
    /// Where the bytes after the head are; `switch` when the request asked to switch protocols
    /// (`Some(true)` for CONNECT).
    Next {
        state: State,
        switch: Option<bool>,
    },
    Refuse(&'static str),
}

/// One connection's place in the client's byte stream.
pub struct Tracker {
    state: State,
    /// A request asked to switch protocols (`Some(true)`: CONNECT) and its answer is not
    /// written yet. Bytes meanwhile are still followed as HTTP/1: if the answer refuses the
    /// switch, hyper reads them as requests.
    awaiting: Option<bool>,
    /// The part of a head that arrived in earlier reads.
    partial: Vec<u8>,
    limits: Limits,
    peer: SocketAddr,
}

impl Tracker {
    pub fn new(limits: Limits, peer: SocketAddr) -> Self {
        Self {
            state: State::Head,
            awaiting: None,
            partial: Vec::new(),
            limits,
            peer,
        }
    }

    /// Follows `data`, the bytes one read just delivered, damaging a head that must be
    /// refused.
    fn inspect(&mut self, data: &mut [u8]) -> Option<Refused> {
        let mut at = 0;
        while at < data.len() {
            at = match self.state {
                State::Off => return None,
                State::Head => match self.head(data, at) {
                    Step::Next(next) => next,
                    Step::Wait => return None,
                    Step::Refused(refused) => return Some(refused),
                },
                State::Body(left) => {
                    let here = (data.len() - at) as u64;
                    if here < left {
                        self.state = State::Body(left - here);
                        return None;
                    }
                    self.state = State::Head;
                    at + usize::try_from(left).unwrap_or(usize::MAX)
                }
                State::Chunked(chunk) => self.chunked(chunk, data, at),
            };
        }
        None
    }

    /// A head starting at `data[at..]` (after `self.partial`).
    fn head(&mut self, data: &mut [u8], at: usize) -> Step {
        let Some(rest) = data.get(at..) else {
            return Step::Wait;
        };
        let (end, head) = if self.partial.is_empty() {
            match examine(rest, self.limits.max_headers) {
                Examined::Complete(head) => (at + head.len, head),
                Examined::Partial => {
                    if rest.len() > self.limits.max_head_bytes {
                        self.state = State::Off;
                    } else {
                        self.partial.extend_from_slice(rest);
                    }
                    return Step::Wait;
                }
                Examined::Invalid => {
                    self.state = State::Off;
                    return Step::Wait;
                }
            }
        } else {
            let before = self.partial.len();
            let room = (self.limits.max_head_bytes + 1).saturating_sub(before);
            self.partial
                .extend_from_slice(rest.get(..room.min(rest.len())).unwrap_or_default());
            match examine(&self.partial, self.limits.max_headers) {
                Examined::Complete(head) if head.len > before => {
                    self.partial.clear();
                    (at + head.len - before, head)
                }
                Examined::Partial if self.partial.len() <= self.limits.max_head_bytes => {
                    return Step::Wait;
                }
                _ => {
                    self.partial.clear();
                    self.state = State::Off;
                    return Step::Wait;
                }
            }
        };
        match head.verdict {
            Verdict::Next { state, switch } => {
                self.state = state;
                if switch.is_some() {
                    self.awaiting = switch;
                }
                Step::Next(end)
            }
            Verdict::Refuse(reason) => {
                tracing::info!(peer = %self.peer, reason, "request refused with 400 before it was parsed");
                // hyper answers 400 and closes; nothing after this head is a request.
                self.state = State::Off;
                Step::Refused(damage(data, at, end, head.terminator))
            }
        }
    }

    /// Steps through a chunked body as hyper's decoder does; chunk data is skipped whole.
    fn chunked(&mut self, chunk: Chunk, data: &[u8], at: usize) -> usize {
        if let Chunk::Data(left) = chunk {
            let here = (data.len() - at) as u64;
            if here < left {
                self.state = State::Chunked(Chunk::Data(left - here));
                return data.len();
            }
            self.state = State::Chunked(Chunk::DataCr);
            return at + usize::try_from(left).unwrap_or(usize::MAX);
        }
        let Some(&byte) = data.get(at) else {
            return data.len();
        };
        self.state = match next_chunk_state(chunk, byte) {
            Some(Chunk::Start) if chunk == Chunk::EndLf => State::Head,
            Some(next) => State::Chunked(next),
            // hyper fails the body on the same byte and the connection ends.
            None => State::Off,
        };
        at + 1
    }
}

/// What following one head gave.
enum Step {
    /// Bytes after the head start here.
    Next(usize),
    /// This read holds nothing more to follow.
    Wait,
    Refused(Refused),
}

/// How a refused head was made to fail in hyper's parser.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// A NUL is in its last line, before the blank line that ends it.
    Damaged,
    /// Only the head's last byte was in this read: it is now a NUL, so the head no longer
    /// ends. hyper, which after a partial read parses only once it sees a head's end, must be
    /// given one, or it waits for more (see [`Tracker::after_read`]).
    Unterminated,
}

/// Puts a NUL into the head ending at `data[..end]` (begun at `data[at]` or in an earlier
/// read). The byte before the blank line is preferred: the head still visibly ends, and that
/// byte (the last of a header value or of the version) is never allowed to be NUL.
fn damage(data: &mut [u8], at: usize, end: usize, terminator: usize) -> Refused {
    let before_blank = end.checked_sub(terminator + 1).filter(|&i| i >= at);
    if let Some(byte) = before_blank.and_then(|i| data.get_mut(i)) {
        *byte = 0;
        return Refused::Damaged;
    }
    if let Some(last) = end.checked_sub(1).and_then(|i| data.get_mut(i)) {
        *last = 0;
    }
    Refused::Unterminated
}

/// hyper's chunked decoder, one byte at a time. `None` where hyper fails the body. After the
/// last chunk's final LF this returns `Start`, which the caller reads as "next head".
fn next_chunk_state(chunk: Chunk, byte: u8) -> Option<Chunk> {
    let hex = |size: u64| {
        let digit = char::from(byte).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(digit))
    };
    Some(match (chunk, byte) {
        (Chunk::Start, _) => Chunk::Size(hex(0)?),
        (Chunk::Size(size), b'\t' | b' ') | (Chunk::SizeLws(size), b'\t' | b' ') => {
            Chunk::SizeLws(size)
        }
        (Chunk::Size(size) | Chunk::SizeLws(size) | Chunk::Extension(size), b';') => {
            Chunk::Extension(size)
        }
        (Chunk::Size(size) | Chunk::SizeLws(size) | Chunk::Extension(size), b'\r') => {
            Chunk::SizeLf(size)
        }
        (Chunk::Size(size), _) => Chunk::Size(hex(size)?),
        (Chunk::SizeLws(_), _) | (Chunk::Extension(_), b'\n') => return None,
        (Chunk::Extension(size), _) => Chunk::Extension(size),
        (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
        (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Start,
        (Chunk::EndCr, b'\r') => Chunk::EndLf,
        (Chunk::EndCr | Chunk::Trailer, _) if byte != b'\r' => Chunk::Trailer,
        (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
        (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
        (Chunk::EndLf, b'\n') => Chunk::Start,
        _ => return None,
    })
}

enum Examined {
    Complete(Head),
    Partial,
    /// hyper refuses this head on its own (or it is not HTTP/1 at all).
    Invalid,
}

struct Head {
    /// Bytes from the request line through the blank line.
    len: usize,
    /// Bytes of the line end and blank line that end it (`\r\n\r\n`, or bare `\n`s).
    terminator: usize,
    verdict: Verdict,
}

/// Parses one head with hyper's parser and decides what follows it.
fn examine(bytes: &[u8], max_headers: usize) -> Examined {
    let mut on_stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut on_heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
        &mut on_stack[..max_headers]
    } else {
        on_heap.resize(max_headers, MaybeUninit::uninit());
        &mut on_heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(bytes, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Examined::Partial,
        Err(_) => return Examined::Invalid,
    };
    let head = bytes.get(..len).unwrap_or_default();
    let terminator = [b"\r\n\r\n".as_slice(), b"\n\r\n", b"\r\n\n", b"\n\n"]
        .iter()
        .find(|end| head.ends_with(end))
        .map_or(0, |end| end.len());
    Examined::Complete(Head {
        len,
        terminator,
        verdict: verdict(&req),
    })
}

fn verdict(req: &httparse::Request<'_, '_>) -> Verdict {
    // Rule 26: what follows a `#` is not sent by browsers; hyper would drop it silently, and
    // the app behind might not.
    if req.path.is_some_and(|p| p.contains('#')) {
        return Verdict::Refuse("a raw '#' in the request target");
    }
    let mut length = None;
    let mut bad_length = false;
    let mut chunked = false;
    let mut upgrade = false;
    for header in req.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(header.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(n) => length = Some(n),
                None => bad_length = true,
            }
        } else if header.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    // Rule 19: two framings for one body is how one request hides another. hyper does not
    // even look at a Content-Length after a Transfer-Encoding, so a malformed one counts too.
    if chunked && (length.is_some() || bad_length) {
        return Verdict::Refuse("both Content-Length and Transfer-Encoding");
    }
    let state = match length {
        // hyper refuses a malformed length with 400 and closes.
        _ if bad_length => State::Off,
        _ if chunked => State::Chunked(Chunk::Start),
        Some(n) if n > 0 => State::Body(n),
        _ => State::Head,
    };
    let connect = req.method == Some("CONNECT");
    let switch = (connect || (upgrade && req.version == Some(1))).then_some(connect);
    Verdict::Next { state, switch }
}

impl Tracker {
    /// After a read that filled `buf` from `before` on: follows the new bytes, and makes a
    /// head that must be refused fail in hyper's parser.
    pub fn after_read(&mut self, buf: &mut ReadBuf<'_>, before: usize) -> io::Result<()> {
        if self.state == State::Off {
            return Ok(());
        }
        let Some(new) = buf.filled_mut().get_mut(before..) else {
            return Ok(());
        };
        if self.inspect(new) == Some(Refused::Unterminated) {
            if buf.remaining() < END.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request refused before it was parsed",
                ));
            }
            buf.put_slice(END);
        }
        Ok(())
    }

    /// Before the gateway writes `bufs`: the answer to a protocol switch says whether HTTP/1
    /// goes on.
    pub fn before_write(&mut self, bufs: &[io::IoSlice<'_>]) {
        if self.awaiting.is_some()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
        {
            self.answer(first);
        }
    }

    fn answer(&mut self, head: &[u8]) {
        let Some(connect) = self.awaiting else {
            return;
        };
        match head.get(9..12) {
            // The switch happened: what follows is the other protocol's.
            Some(b"101") => self.state = State::Off,
            Some([b'2', ..]) if connect => self.state = State::Off,
            // `100 Continue`: the real answer is still to come.
            Some([b'1', ..]) => return,
            // Refused: HTTP/1 goes on, and has been followed all along.
            Some(_) => {}
            None => self.state = State::Off,
        }
        self.awaiting = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head_bytes: 8192,
        max_headers: 100,
    };

    fn tracker() -> Tracker {
        Tracker::new(LIMITS, SocketAddr::from(([127, 0, 0, 1], 1)))
    }

    /// Feeds `stream` in reads of `size` bytes; returns what hyper would read (with the end
    /// `poll_read` appends to a head damaged in its last byte).
    fn follow(t: &mut Tracker, stream: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in stream.chunks(size) {
            let mut piece = piece.to_vec();
            if t.inspect(&mut piece) == Some(Refused::Unterminated) {
                piece.extend_from_slice(END);
            }
            out.extend(piece);
        }
        out
    }

    /// Asserts that the head of `stream` starting at `start` reaches hyper damaged, and that
    /// hyper would both see its end and fail to parse it; nothing before it is touched.
    fn assert_refused(stream: &[u8], start: usize, size: usize) {
        let out = follow(&mut tracker(), stream, size);
        let changed = out
            .iter()
            .zip(stream)
            .position(|(seen, sent)| seen != sent)
            .unwrap_or(stream.len());
        let end = start + head_len(&stream[start..]);
        assert!(
            (start..end).contains(&changed),
            "read size {size}: changed at {changed}, head at {start}..{end}"
        );
        let head = &out[start..];
        let mut headers = [httparse::EMPTY_HEADER; 16];
        assert!(
            httparse::Request::new(&mut headers).parse(head).is_err(),
            "read size {size}"
        );
        assert!(
            head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n"),
            "read size {size}: hyper would wait for the head's end"
        );
    }

    fn assert_untouched(stream: &[u8], size: usize) -> Tracker {
        let mut t = tracker();
        assert_eq!(follow(&mut t, stream, size), stream, "read size {size}");
        t
    }

    fn head_len(stream: &[u8]) -> usize {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        match httparse::Request::new(&mut headers).parse(stream) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("{other:?}"),
        }
    }

    const SMUGGLE_CL_TE: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    const SMUGGLE_TE_CL: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";
    const SIZES: [usize; 7] = [1, 2, 3, 7, 20, 24, usize::MAX];

    #[test]
    fn both_framings_are_refused_in_either_order_and_however_the_bytes_arrive() {
        // hyper skips a Content-Length after a Transfer-Encoding unread, malformed or not.
        let malformed: [&[u8]; 2] = [
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4, 4\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: abc\r\n\r\n0\r\n\r\n",
        ];
        for stream in [SMUGGLE_CL_TE, SMUGGLE_TE_CL, malformed[0], malformed[1]] {
            for size in SIZES {
                assert_refused(stream, 0, size);
            }
        }
    }

    #[test]
    fn a_raw_hash_in_the_target_is_refused() {
        for stream in [
            b"GET /public#/../admin HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
            b"GET /p?a=b#c HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /#x HTTP/1.1\r\n\r\n",
            b"GET /#x HTTP/1.1\nHost: x\n\n",
        ] {
            for size in SIZES {
                assert_refused(stream, 0, size);
            }
        }
    }

    /// A head whose last byte comes alone: that byte becomes a NUL and an end follows it,
    /// or, with no room for one in hyper's buffer, the read fails and the connection ends.
    #[test]
    fn a_head_refused_in_its_last_byte_is_given_an_end_or_fails_the_read() {
        let stream = b"GET /#x HTTP/1.1\r\n\r\n";
        let (head, last) = stream.split_at(stream.len() - 1);
        for room in [16, 1] {
            let mut t = tracker();
            let mut first = head.to_vec();
            let mut buf = ReadBuf::new(&mut first);
            buf.set_filled(head.len());
            t.after_read(&mut buf, 0).unwrap();
            assert_eq!(buf.filled(), head);

            let mut space = vec![0u8; room];
            let mut buf = ReadBuf::new(&mut space);
            buf.put_slice(last);
            let read = t.after_read(&mut buf, 0);
            if room == 1 {
                assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
            } else {
                read.unwrap();
                assert_eq!(buf.filled(), b"\0\r\n\r\n");
            }
        }
    }

    #[test]
    fn ordinary_requests_pass_untouched_pipelined_and_with_bodies() {
        let stream = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".as_slice(),
            b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\nExpires: never\r\n\r\n",
            b"\r\nGET /last?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        .concat();
        for size in SIZES {
            assert_eq!(assert_untouched(&stream, size).state, State::Head);
        }
    }

    #[test]
    fn a_head_hidden_in_a_body_is_body_and_the_request_after_it_is_checked() {
        let body = SMUGGLE_CL_TE;
        let sized = [
            format!("POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat();
        let chunked = [
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
            format!("{:x}\r\n", body.len()).as_bytes(),
            body,
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        for carrier in [sized, chunked] {
            for size in SIZES {
                assert_untouched(&carrier, size);
                let then = [carrier.as_slice(), SMUGGLE_TE_CL].concat();
                assert_refused(&then, carrier.len(), size);
            }
        }
    }

    #[test]
    fn after_a_switch_nothing_is_touched_and_after_a_refused_one_checks_go_on() {
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        for (answers, switched) in [
            (["HTTP/1.1 101 Switching Protocols\r\n"].as_slice(), true),
            (
                &[
                    "HTTP/1.1 100 Continue\r\n\r\n",
                    "HTTP/1.1 401 Unauthorized\r\n",
                ],
                false,
            ),
        ] {
            let mut t = assert_untouched(upgrade, usize::MAX);
            for answer in answers {
                t.before_write(&[io::IoSlice::new(b""), io::IoSlice::new(answer.as_bytes())]);
            }
            let after = follow(&mut t, SMUGGLE_CL_TE, 8);
            assert_eq!(after == SMUGGLE_CL_TE, switched, "{answers:?}");
        }
    }

    /// Bytes sent right behind a request to switch, before its answer: if the switch is
    /// refused hyper reads them as requests, so they are checked like any.
    #[test]
    fn requests_pipelined_behind_a_switch_request_are_checked() {
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
        let stream = [upgrade.as_slice(), SMUGGLE_CL_TE].concat();
        for size in SIZES {
            assert_refused(&stream, upgrade.len(), size);
        }
    }

    #[test]
    fn http2_and_garbage_are_left_to_hyper() {
        for stream in [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(),
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(assert_untouched(stream, 5).state, State::Off);
        }
    }

    #[test]
    fn a_head_longer_than_the_limit_stops_the_checks_without_growing() {
        let long = [
            b"GET / HTTP/1.1\r\nX-Long: ".as_slice(),
            &vec![b'a'; 20_000],
        ]
        .concat();
        let t = assert_untouched(&long, 1000);
        assert_eq!(t.state, State::Off);
        assert!(t.partial.len() <= LIMITS.max_head_bytes + 1);
    }

    #[test]
    fn chunk_states_follow_hypers_decoder() {
        let bad: [&[u8]; 4] = [b"x\r\n", b"5 x\r\n", b"5;a\nb", b"1\r\nab"];
        for body in bad {
            let mut t = tracker();
            t.state = State::Chunked(Chunk::Start);
            follow(&mut t, body, 1);
            assert_eq!(t.state, State::Off, "{:?}", String::from_utf8_lossy(body));
        }
        let mut t = tracker();
        t.state = State::Chunked(Chunk::Start);
        follow(&mut t, b"A\r\n0123456789\r\n0\r\n\r\n", 1);
        assert_eq!(t.state, State::Head);
    }
}

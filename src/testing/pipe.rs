//! The reader thread (`zen-ws-mock-read-N`) and [`Pipe`], the byte stream a
//! connection's WebSocket runs on.
//!
//! Why a second thread per connection: a connection thread must wake both when
//! the client sends bytes and when the handle sends a command (an injected
//! message, a disconnect). A blocking read cannot wait for a channel, and a
//! short read timeout polls: every idle connection then costs hundreds of
//! wake-ups a second, and every command waits for the next one. So a reader
//! thread does the blocking reads and forwards the bytes through a channel, and
//! the connection thread sleeps on that channel and its commands at once
//! (`crossbeam_channel::Select`), waking only when there is work.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

/// Size of one read from the socket.
const CHUNK: usize = 16 * 1024;
/// How many chunks may wait for the connection thread. When a silent connection
/// stops reading, the reader blocks once these are queued, the kernel's buffers
/// fill, and the client's writes stall, as with a real half-open peer.
pub(super) const QUEUED_CHUNKS: usize = 16;

/// The reader thread's body: forward everything the client sends until end of
/// stream, a socket error, or the connection thread dropping its receivers.
pub(super) fn run_reader(mut socket: TcpStream, bytes: Sender<Vec<u8>>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if bytes.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // Dropping `bytes` tells the connection thread: end of stream.
}

/// Reads what the reader thread forwarded; writes straight to the socket.
#[derive(Debug)]
pub(super) struct Pipe {
    incoming: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    eof: bool,
    socket: TcpStream,
    /// `Some(deadline)`: a read waits for bytes until then, then fails with
    /// `TimedOut` (handshakes, which need blocking reads). `None`: a read with
    /// nothing to return fails with `WouldBlock` at once (after the upgrade).
    blocking_until: Option<Instant>,
}

impl Pipe {
    pub(super) fn new(incoming: Receiver<Vec<u8>>, socket: TcpStream, deadline: Instant) -> Pipe {
        Pipe {
            incoming,
            chunk: Vec::new(),
            pos: 0,
            eof: false,
            socket,
            blocking_until: Some(deadline),
        }
    }

    /// From now on, never block in `read`.
    pub(super) fn set_nonblocking(&mut self) {
        self.blocking_until = None;
    }

    pub(super) fn socket(&self) -> &TcpStream {
        &self.socket
    }
}

impl Read for Pipe {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.chunk.len() {
            if self.eof {
                return Ok(0);
            }
            let next = match self.blocking_until {
                Some(deadline) => self.incoming.recv_deadline(deadline).map_err(|e| match e {
                    RecvTimeoutError::Timeout => Some(io::ErrorKind::TimedOut),
                    RecvTimeoutError::Disconnected => None,
                }),
                None => self.incoming.try_recv().map_err(|e| match e {
                    TryRecvError::Empty => Some(io::ErrorKind::WouldBlock),
                    TryRecvError::Disconnected => None,
                }),
            };
            match next {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(Some(kind)) => return Err(io::Error::from(kind)),
                Err(None) => self.eof = true,
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

/// The byte stream under a test server's WebSocket: the pipe, plain or in TLS.
/// Shared by the mock server and the Deribit server.
pub(super) trait Transport: std::io::Read + std::io::Write {
    fn pipe(&mut self) -> &mut Pipe;
}

impl Transport for Pipe {
    fn pipe(&mut self) -> &mut Pipe {
        self
    }
}

impl Transport for native_tls::TlsStream<Pipe> {
    fn pipe(&mut self) -> &mut Pipe {
        self.get_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    fn socket() -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        TcpStream::connect(listener.local_addr().unwrap()).unwrap()
    }

    #[test]
    fn a_pipe_returns_chunks_across_reads_then_would_block_then_eof() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let mut pipe = Pipe::new(rx, socket(), Instant::now() + Duration::from_secs(5));
        tx.send(b"hello".to_vec()).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(pipe.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf, b"hel");
        pipe.set_nonblocking();
        assert_eq!(pipe.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"lo");
        assert_eq!(
            pipe.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(tx);
        assert_eq!(pipe.read(&mut buf).unwrap(), 0);
        assert_eq!(pipe.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_blocking_pipe_times_out_at_its_deadline() {
        let (_tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(1);
        let mut pipe = Pipe::new(rx, socket(), Instant::now() + Duration::from_millis(20));
        let mut buf = [0u8; 8];
        assert_eq!(
            pipe.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }
}

//! Servers and helpers shared by the benchmarks: a cheap flood server that
//! writes pre-encoded frames, an echo server, and a watchdog.
#![allow(dead_code)] // each bench uses a subset

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tungstenite::Message as WsMessage;

/// Payload size of a flood message (fits the 7-bit length of a frame header).
pub const FLOOD_PAYLOAD: usize = 100;
/// The marker that ends a flood round.
pub const END_MARKER: &str = "END";
/// Bound on any single blocking socket read in the benches.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on any single blocking socket write in the benches.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

pub fn start_watchdog(limit: Duration) {
    std::thread::Builder::new()
        .name("bench-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!("bench: watchdog fired after {limit:?}; aborting");
            std::process::exit(2);
        })
        .expect("spawning the watchdog thread");
}

// ---- servers ----------------------------------------------------------------

/// A loopback server thread that serves one connection at a time until stopped.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<usize>,
    name: &'static str,
}

impl Server {
    pub fn start<T: ?Sized + Send + Sync + 'static>(
        name: &'static str,
        data: Arc<T>,
        handle: fn(TcpStream, &T) -> Result<(), String>,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener");
        let addr = listener.local_addr().expect("reading the listener address");
        // Non-blocking accept, polled, so that `stop` can end the thread.
        listener
            .set_nonblocking(true)
            .expect("making the listener non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("bench-{name}-server"))
            .spawn(move || {
                let mut served = 0;
                while !flag.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = handle(stream, &data) {
                                eprintln!("{name} server: connection failed: {e}");
                            }
                            served += 1;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => {
                            eprintln!("{name} server: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                served
            })
            .expect("spawning a server thread");
        Server {
            addr,
            stop,
            thread,
            name,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        match self.thread.join() {
            Ok(n) => println!("{} server: stopped after {n} connections", self.name),
            Err(_) => panic!("{} server thread panicked", self.name),
        }
    }
}

/// Blocking, with bounded reads and writes.
pub fn configure(stream: &TcpStream) -> Result<(), String> {
    stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(READ_TIMEOUT)))
        .and_then(|_| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|_| stream.set_nodelay(true))
        .map_err(|e| format!("configuring the socket: {e}"))
}

/// An unmasked server text frame (FIN + opcode 1) with a 7-bit length.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "7-bit frame length only");
    let mut f = Vec::with_capacity(payload.len() + 2);
    f.push(0x81);
    f.push(payload.len() as u8);
    f.extend_from_slice(payload);
    f
}

/// The 100-byte flood payload (ASCII, so valid UTF-8).
pub fn flood_payload() -> Vec<u8> {
    (0..FLOOD_PAYLOAD).map(|i| b'a' + (i % 26) as u8).collect()
}

/// One round's bytes: `messages` frames, then the `END` marker frame.
pub fn flood_stream(messages: usize) -> Vec<u8> {
    let frame = text_frame(&flood_payload());
    let end = text_frame(END_MARKER.as_bytes());
    let mut buf = Vec::with_capacity(frame.len() * messages + end.len());
    for _ in 0..messages {
        buf.extend_from_slice(&frame);
    }
    buf.extend_from_slice(&end);
    buf
}

/// Upgrade, write the whole pre-encoded flood with `write_all`, then wait for
/// the client's close and answer it.
pub fn serve_flood(stream: TcpStream, flood: &[u8]) -> Result<(), String> {
    configure(&stream)?;
    let mut ws = tungstenite::accept(stream).map_err(|e| format!("handshake: {e}"))?;
    ws.get_mut()
        .write_all(flood)
        .and_then(|_| ws.get_mut().flush())
        .map_err(|e| format!("writing the flood: {e}"))?;
    finish_server(&mut ws)
}

/// Echo every data message back until the client closes.
pub fn serve_echo(stream: TcpStream, _: &()) -> Result<(), String> {
    configure(&stream)?;
    let mut ws = tungstenite::accept(stream).map_err(|e| format!("handshake: {e}"))?;
    loop {
        match ws.read() {
            Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_))) => {
                ws.send(m).map_err(|e| format!("echoing: {e}"))?;
            }
            Ok(WsMessage::Close(_)) => return finish_server(&mut ws),
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
}

/// Read until the close handshake is over (tungstenite queues the close reply
/// when it reads the client's close frame; the reads and flushes send it).
pub fn finish_server(ws: &mut tungstenite::WebSocket<TcpStream>) -> Result<(), String> {
    loop {
        match ws.read() {
            Ok(WsMessage::Close(_)) => {
                let _ = ws.flush();
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                return Ok(())
            }
            // The client may drop the TCP connection right after the handshake.
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(format!("waiting for the close: {e}")),
        }
    }
}

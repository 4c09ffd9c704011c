//! A TCP stream that can tell when the bytes it last read reached its socket: the kernel's
//! receive timestamp (`SO_TIMESTAMPNS`), taken as the packet entered the receiving network
//! stack. Over loopback that is the moment the sender's write delivered it, before this process
//! was woken, scheduled and had parsed anything. A latency measured to it is the server's part
//! alone; measured to the parsed message, it also holds the client's own wake-up and work, which
//! on a machine where client and server share the cores is not the server's doing.

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeSpec;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Stamped {
    inner: TcpStream,
    /// Set once [`Stamped::stamp_arrivals`] is called (each read then asks for the timestamp).
    stamping: bool,
    /// Arrival of the newest bytes read so far, µs since the Unix epoch (0: none known).
    last_arrival_us: u64,
}

impl Stamped {
    pub fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            stamping: false,
            last_arrival_us: 0,
        }
    }

    /// Asks the kernel to timestamp what arrives from now on. Off by default: turning it on
    /// anywhere makes the kernel stamp every packet it receives, a small cost for all. When no
    /// socket had it on, the kernel switches it on shortly after (from a work queue): what
    /// arrives before then has no arrival time, and is left out of arrival latencies.
    pub fn stamp_arrivals(&mut self) -> io::Result<()> {
        setsockopt(&self.inner, sockopt::ReceiveTimestampns, &true)?;
        self.stamping = true;
        Ok(())
    }

    /// When the newest bytes read so far arrived (µs since the epoch), if stamping is on. A read
    /// that returned several messages gives them all the arrival of its last packet: never
    /// earlier than their own, so a latency measured to it is never understated.
    pub fn last_arrival_us(&self) -> Option<u64> {
        (self.last_arrival_us > 0).then_some(self.last_arrival_us)
    }
}

/// One `recvmsg` into `buf`; returns the bytes read and the arrival time it reported, if any.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut space = nix::cmsg_space!(TimeSpec);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::empty())?;
    let mut at = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            let us = ts.tv_sec() as i128 * 1_000_000 + ts.tv_nsec() as i128 / 1000;
            at = u64::try_from(us).ok();
        }
    }
    Ok((msg.bytes, at))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.stamping {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let fd = this.inner.as_raw_fd();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let want = unfilled.len();
            let mut short = None;
            let got = this.inner.try_io(Interest::READABLE, || {
                let (n, at) = recv_stamped(fd, unfilled)?;
                if n > 0 && n < want {
                    // Less than asked for: the socket is drained. Saying "would block" lets the
                    // runtime mark it so (as its own reads do after a short read), which saves
                    // the extra recvmsg per message that would only learn the same.
                    short = Some((n, at));
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok((n, at))
            });
            let (n, at) = match (got, short) {
                (_, Some(read)) => read,
                (Ok(read), None) => read,
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            };
            if let Some(at) = at {
                this.last_arrival_us = at;
            }
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::now_us;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn arrival_is_stamped_between_write_and_read() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tx = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (rx, _) = l.accept().await.unwrap();
        let mut rx = Stamped::new(rx);
        let mut buf = [0u8; 5];

        // Not stamping: no arrival known.
        tx.write_all(b"hello").await.unwrap();
        rx.read_exact(&mut buf).await.unwrap();
        assert_eq!(rx.last_arrival_us(), None);

        rx.stamp_arrivals().unwrap();
        // The kernel turns receive timestamps on through a work queue when no socket had them
        // yet: wait (boundedly) until a probe comes back stamped.
        for _ in 0..200 {
            tx.write_all(b"probe").await.unwrap();
            rx.read_exact(&mut buf).await.unwrap();
            if rx.last_arrival_us().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let before = now_us();
        tx.write_all(b"world").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        rx.read_exact(&mut buf).await.unwrap();
        let after = now_us();
        assert_eq!(&buf, b"world");
        let at = rx.last_arrival_us().expect("stamped");
        // Stamped on arrival, not when read 20 ms later.
        assert!(
            before <= at && at + 10_000 <= after,
            "{before} {at} {after}"
        );
    }
}

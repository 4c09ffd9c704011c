//! The server side of TLS (`transport::lean_tls`) against rustls's own client: data both ways in
//! every size, records split across reads, close_notify both ways, and no buffer held while idle.

// A counting allocator needs `GlobalAlloc`, an unsafe trait: it only forwards to `System`.
#![allow(unsafe_code)]

use herald::transport::lean_tls::LeanTls;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types};

/// Counts live heap bytes, to see what an idle connection holds.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);

        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

/// The tests run one at a time: the live-heap count is the whole process's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    configs_with(&[&rustls::version::TLS13, &rustls::version::TLS12])
}

fn configs_with(
    client_versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(client_versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

/// A server-side connection and the client at the other end; `split` sends the client's bytes
/// to the server one at a time (records then arrive in many reads).
async fn pair(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    split: bool,
) -> (LeanTls, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connect_to = if split {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = proxy.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut from, _) = proxy.accept().await.unwrap();
            let mut to = TcpStream::connect(addr).await.unwrap();
            to.set_nodelay(true).unwrap();
            let (mut fr, mut fw) = from.split();
            let (mut tr, mut tw) = to.split();
            let up = async {
                let mut b = [0u8; 1];
                while fr.read(&mut b).await.unwrap_or(0) == 1 {
                    if tw.write_all(&b).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = tw.shutdown().await;
            };
            let down = async {
                let _ = tokio::io::copy(&mut tr, &mut fw).await;
                let _ = fw.shutdown().await;
            };
            tokio::join!(up, down);
        });
        at
    } else {
        addr
    };
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let (s, c) = tokio::join!(
        async {
            let (tcp, _) = listener.accept().await.unwrap();
            LeanTls::accept(tcp, server.clone()).await.unwrap()
        },
        async {
            let tcp = TcpStream::connect(connect_to).await.unwrap();
            connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap()
        }
    );
    (s, c)
}

/// Reads from the server side until `n` bytes arrived.
async fn server_read(s: &mut LeanTls, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let r = std::future::poll_fn(|cx| s.poll_read_plain(cx, &mut got))
            .await
            .unwrap();
        assert!(r > 0, "end of stream after {} of {n} bytes", got.len());
    }
    got
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn both_ways(s: &mut LeanTls, c: &mut Client, sizes: &[usize]) {
    for (i, &n) in sizes.iter().enumerate() {
        let up = pattern(n, i as u8);
        let down = pattern(n, 100 + i as u8);
        let (got_up, ()) = tokio::join!(server_read(s, n), async {
            c.write_all(&up).await.unwrap();
            c.flush().await.unwrap();
        });
        assert!(got_up == up, "client to server, {n} bytes");
        let ((), got_down) = tokio::join!(
            async {
                s.write_all(&down).await.unwrap();
                s.flush().await.unwrap();
            },
            async {
                let mut b = vec![0u8; n];
                c.read_exact(&mut b).await.unwrap();
                b
            }
        );
        assert!(got_down == down, "server to client, {n} bytes");
        assert_eq!(s.buffered(), 0, "buffers held after {n} bytes each way");
    }
}

const SIZES: &[usize] = &[
    1, 100, 4095, 4096, 16_383, 16_384, 16_385, 65_536, 65_537, 300_000,
];

#[tokio::test]
async fn data_of_every_size_both_ways_tls13() {
    let _serial = SERIAL.lock().await;
    let (server, client) = configs();
    let (mut s, mut c) = pair(&server, &client, false).await;
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    both_ways(&mut s, &mut c, SIZES).await;
}

#[tokio::test]
async fn data_of_every_size_both_ways_tls12() {
    let _serial = SERIAL.lock().await;
    let (server, client) = configs_with(&[&rustls::version::TLS12]);
    let (mut s, mut c) = pair(&server, &client, false).await;
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    both_ways(&mut s, &mut c, SIZES).await;
}

#[tokio::test]
async fn records_split_into_single_bytes() {
    let _serial = SERIAL.lock().await;
    let (server, client) = configs();
    let (mut s, mut c) = pair(&server, &client, true).await;
    both_ways(&mut s, &mut c, &[1, 1000, 20_000]).await;
}

#[tokio::test]
async fn the_client_closing_ends_the_stream_and_the_server_closes_with_close_notify() {
    let _serial = SERIAL.lock().await;
    let (server, client) = configs();
    let (mut s, mut c) = pair(&server, &client, false).await;
    both_ways(&mut s, &mut c, &[10]).await;
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = std::future::poll_fn(|cx| s.poll_read_plain(cx, &mut rest))
        .await
        .unwrap();
    assert_eq!(n, 0, "the server sees the end of the stream");
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    // A clean end: rustls's client reports an end without close_notify as an error.
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
}

#[tokio::test]
async fn plain_http_is_not_a_handshake() {
    let _serial = SERIAL.lock().await;
    let (server, _) = configs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, ()) = tokio::join!(
        async {
            let (tcp, _) = listener.accept().await.unwrap();
            LeanTls::accept(tcp, server.clone()).await
        },
        async {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
        }
    );
    assert!(accepted.is_err(), "plain HTTP accepted as a TLS handshake");
}

#[tokio::test]
async fn garbage_after_the_handshake_is_an_error() {
    let _serial = SERIAL.lock().await;
    let (server, client) = configs();
    let (mut s, mut c) = pair(&server, &client, false).await;
    both_ways(&mut s, &mut c, &[10]).await;
    // Bytes that are no TLS record, under the client's TLS layer.
    c.get_mut()
        .0
        .write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut got = Vec::new();
    let r = std::future::poll_fn(|cx| s.poll_read_plain(cx, &mut got)).await;
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
}

/// What the server side of an idle connection holds: its TLS state and no buffer.
#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_holds_its_tls_state_only() {
    let _serial = SERIAL.lock().await;
    const N: usize = 200;
    let (server, client) = configs();
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..N {
        let (mut s, mut c) = pair(&server, &client, false).await;
        both_ways(&mut s, &mut c, &[300]).await;
        servers.push(s);
        clients.push(c);
    }
    let held = LIVE.load(Ordering::Relaxed);
    drop(servers);
    let per_conn = (held - LIVE.load(Ordering::Relaxed)) as usize / N;
    eprintln!("server-side heap per idle TLS connection: {per_conn} B");
    // rustls's own state is 3,273 B of it (rustls 0.23: the connection 1,088 B, the TLS 1.3
    // traffic state 640 B, two record keys of 560 B, the key schedule 224 B, two queues 96 B):
    // any buffer kept while idle (4 KiB for a read) would exceed this.
    assert!(
        per_conn <= 3600,
        "{per_conn} B of heap per idle TLS connection"
    );
}

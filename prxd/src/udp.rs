//! UDP flows of the IP filter: the kext NATs a client's datagrams to prxd's
//! listen address (UDP, same port as TCP); prxd asks the kext for the
//! client's original destination (the lookup answers from the NAT table for
//! UDP flows as for TCP) and relays directly, one connected socket per flow:
//! the client's datagrams to the destination, the destination's back to the
//! client from prxd's listen socket (the kext rewrites their source back to
//! the destination). A flow ends after `udp_idle_timeout_s` without a
//! datagram either way; one log line per flow (`conn udp client=… dst=…`, as
//! a TCP connection's with `udp` after `conn`). A flow routed to a `socks5://`
//! upstream goes through its UDP relay (RFC 1928 §7): a UDP ASSOCIATE on a
//! TCP connection held for the flow's life, each datagram sent with the
//! relay header naming the destination, each answer's header checked
//! (fragments dropped) and removed. Datagrams of a client the kext has no
//! record of, or routed to an `http://` upstream (CONNECT carries no UDP),
//! are dropped and counted (`udp_refused`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;

use crate::config::{Kext, Via};
use crate::server::{Daemon, canonical, log, socket_addr};
use crate::stats::Stats;

/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65535;

struct Flow {
    out: Arc<UdpSocket>,
    up: Arc<AtomicU64>,
    /// The SOCKS5 relay header for each datagram (empty: direct).
    prefix: Arc<Vec<u8>>,
}

/// The way out of one flow.
struct Way {
    out: UdpSocket,
    prefix: Vec<u8>,
    /// The SOCKS5 association (kept open for the flow's life).
    ctl: Option<tokio::net::TcpStream>,
    via: String,
}

async fn open_way(cfg: &crate::config::Config, via: &Via, dst: SocketAddr) -> Result<Way, String> {
    let any = |v4: bool| -> SocketAddr {
        if v4 {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        }
    };
    match via {
        Via::Direct => {
            let out = UdpSocket::bind(any(dst.is_ipv4()))
                .await
                .map_err(|e| format!("socket: {e}"))?;
            out.connect(dst)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            Ok(Way {
                out,
                prefix: Vec::new(),
                ctl: None,
                via: "direct".into(),
            })
        }
        Via::Upstream(name) => {
            let up = cfg
                .upstreams
                .get(name)
                .ok_or_else(|| format!("no upstream {name}"))?;
            if up.kind != crate::upstream::Kind::Socks5 {
                return Err(format!(
                    "upstream {name} is an HTTP proxy: CONNECT carries no UDP"
                ));
            }
            let assoc = async {
                let mut ctl = tokio::net::TcpStream::connect((up.host.as_str(), up.port))
                    .await
                    .map_err(|e| format!("upstream {name}: {e}"))?;
                let relay = crate::upstream::socks5_udp_associate(&mut ctl, up, any(true))
                    .await
                    .map_err(|e| format!("upstream {name}: UDP ASSOCIATE: {e}"))?
                    .ok_or_else(|| {
                        format!("upstream {name}: UDP ASSOCIATE: the relay is not an IP address")
                    })?;
                // An unspecified relay address means the server's own.
                let relay = if relay.ip().is_unspecified() {
                    let peer = ctl.peer_addr().map_err(|e| e.to_string())?;
                    SocketAddr::new(peer.ip(), relay.port())
                } else {
                    relay
                };
                Ok::<_, String>((ctl, relay))
            };
            let (ctl, relay) = tokio::time::timeout(cfg.connect_timeout, assoc)
                .await
                .map_err(|_| format!("upstream {name}: UDP ASSOCIATE timed out"))??;
            let out = UdpSocket::bind(any(relay.is_ipv4()))
                .await
                .map_err(|e| format!("socket: {e}"))?;
            out.connect(relay)
                .await
                .map_err(|e| format!("connect to the relay {relay}: {e}"))?;
            Ok(Way {
                out,
                prefix: crate::upstream::socks5_udp_header(dst),
                ctl: Some(ctl),
                via: name.clone(),
            })
        }
    }
}

async fn send(out: &UdpSocket, prefix: &[u8], data: &[u8]) -> std::io::Result<usize> {
    if prefix.is_empty() {
        out.send(data).await
    } else {
        out.send(&[prefix, data].concat()).await
    }
}

/// Serves the UDP side of one listen address until aborted.
pub async fn serve(d: Arc<Daemon>, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let flows: Arc<Mutex<HashMap<SocketAddr, Flow>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                log(&format!("udp receive: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let data = &buf[..n];
        let existing = flows.lock().ok().and_then(|f| {
            f.get(&client)
                .map(|f| (Arc::clone(&f.out), Arc::clone(&f.up), Arc::clone(&f.prefix)))
        });
        if let Some((out, up, prefix)) = existing {
            if send(&out, &prefix, data).await.is_ok() {
                up.fetch_add(n as u64, Ordering::Relaxed);
            }
            continue;
        }
        // A new flow: the kext says where it was going.
        let Some((kext, orig)) = d.lookup(client).await else {
            Stats::inc(&d.stats.udp_refused);
            log(&format!(
                "udp client={client} refused: no kext record for this client"
            ));
            continue;
        };
        let dst = socket_addr(&orig.dst);
        let cfg = d.config();
        if cfg.listen.iter().any(|l| canonical(*l) == dst) {
            Stats::inc(&d.stats.udp_refused);
            log(&format!(
                "udp client={client} dst={dst} refused: the destination is prxd itself"
            ));
            continue;
        }
        let rule = (kext == Kext::Ip).then_some(orig.rule);
        let via = cfg.route(rule, dst).clone();
        let way = match open_way(&cfg, &via, dst).await {
            Ok(w) => w,
            Err(e) => {
                Stats::inc(&d.stats.udp_refused);
                log(&format!(
                    "conn udp client={client} dst={dst} upstream={via} outcome=\"refused: {e}\""
                ));
                continue;
            }
        };
        let Way {
            out,
            prefix,
            ctl,
            via,
        } = way;
        let out = Arc::new(out);
        let prefix = Arc::new(prefix);
        let up = Arc::new(AtomicU64::new(0));
        if send(&out, &prefix, data).await.is_ok() {
            up.fetch_add(n as u64, Ordering::Relaxed);
        }
        Stats::inc(&d.stats.udp_flows);
        if let Ok(mut f) = flows.lock() {
            f.insert(
                client,
                Flow {
                    out: Arc::clone(&out),
                    up: Arc::clone(&up),
                    prefix: Arc::clone(&prefix),
                },
            );
        }
        let (d2, sock2, flows2) = (Arc::clone(&d), Arc::clone(&sock), Arc::clone(&flows));
        let idle = cfg.udp_idle_timeout;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut down = 0u64;
            let mut last_up = up.load(Ordering::Relaxed);
            let mut back = vec![0u8; MAX_DATAGRAM];
            let socks = !prefix.is_empty();
            let mut ctl = ctl;
            let mut outcome = "idle timeout";
            loop {
                // The association ends when the SOCKS server closes its TCP
                // connection (RFC 1928 §7).
                let assoc_gone = async {
                    match ctl.as_mut() {
                        Some(c) => {
                            let mut b = [0u8; 64];
                            loop {
                                match tokio::io::AsyncReadExt::read(c, &mut b).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {}
                                }
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                let got = tokio::select! {
                    r = tokio::time::timeout(idle, out.recv(&mut back)) => r,
                    () = assoc_gone => {
                        outcome = "the SOCKS5 server ended the association";
                        break;
                    }
                };
                match got {
                    Ok(Ok(k)) => {
                        let payload = if socks {
                            // From the relay: its header names the sender.
                            match crate::upstream::socks5_udp_split(&back[..k]) {
                                Some((_, p)) => p,
                                None => continue,
                            }
                        } else {
                            &back[..k]
                        };
                        if sock2.send_to(payload, client).await.is_ok() {
                            down += payload.len() as u64;
                        }
                    }
                    Ok(Err(_)) => {}
                    Err(_) => {
                        // Idle both ways? Datagrams from the client count too.
                        let now_up = up.load(Ordering::Relaxed);
                        if now_up == last_up {
                            break;
                        }
                        last_up = now_up;
                    }
                }
            }
            if let Ok(mut f) = flows2.lock() {
                f.remove(&client);
            }
            if outcome == "idle timeout" {
                Stats::inc(&d2.stats.udp_idle_timeout);
            }
            let up = up.load(Ordering::Relaxed);
            d2.stats.bytes_up.fetch_add(up, Ordering::Relaxed);
            d2.stats.bytes_down.fetch_add(down, Ordering::Relaxed);
            log(&format!(
                "conn udp client={client} dst={dst} rule={} upstream={via} up={up} down={down} duration_ms={} outcome=\"{outcome}\"",
                match rule {
                    Some(r) if r == common::net::control::RULE_UNKNOWN => "ip:nat".to_string(),
                    Some(r) => format!("ip:{r}"),
                    None => "socket".to_string(),
                },
                start.elapsed().as_millis()
            ));
        });
    }
}

//! UDP flows of the IP filter: the kext NATs a client's datagrams to prxd's
//! listen address (UDP, same port as TCP); prxd asks the kext for the
//! client's original destination (the lookup answers from the NAT table for
//! UDP flows as for TCP) and relays directly, one connected socket per flow:
//! the client's datagrams to the destination, the destination's back to the
//! client from prxd's listen socket (the kext rewrites their source back to
//! the destination). A flow ends after `udp_idle_timeout_s` without a
//! datagram either way; one log line per flow (`conn udp client=… dst=…`, as
//! a TCP connection's with `udp` after `conn`). Datagrams of a client the
//! kext has no record of, or routed to an upstream (SOCKS5 UDP ASSOCIATE is
//! not implemented), are dropped and counted (`udp_refused`).

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
                .map(|f| (Arc::clone(&f.out), Arc::clone(&f.up)))
        });
        if let Some((out, up)) = existing {
            if out.send(data).await.is_ok() {
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
        if let Via::Upstream(name) = cfg.route(rule, dst) {
            Stats::inc(&d.stats.udp_refused);
            log(&format!(
                "udp client={client} dst={dst} refused: routed to upstream {name}, and UDP through an upstream (SOCKS5 UDP ASSOCIATE) is not implemented"
            ));
            continue;
        }
        let any: SocketAddr = if dst.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let out = match UdpSocket::bind(any).await {
            Ok(o) => o,
            Err(e) => {
                log(&format!("udp client={client} dst={dst}: socket: {e}"));
                continue;
            }
        };
        if let Err(e) = out.connect(dst).await {
            log(&format!("udp client={client} dst={dst}: connect: {e}"));
            continue;
        }
        let out = Arc::new(out);
        let up = Arc::new(AtomicU64::new(0));
        if out.send(data).await.is_ok() {
            up.fetch_add(n as u64, Ordering::Relaxed);
        }
        Stats::inc(&d.stats.udp_flows);
        if let Ok(mut f) = flows.lock() {
            f.insert(
                client,
                Flow {
                    out: Arc::clone(&out),
                    up: Arc::clone(&up),
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
            loop {
                match tokio::time::timeout(idle, out.recv(&mut back)).await {
                    Ok(Ok(k)) => {
                        if sock2.send_to(&back[..k], client).await.is_ok() {
                            down += k as u64;
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
            Stats::inc(&d2.stats.udp_idle_timeout);
            let up = up.load(Ordering::Relaxed);
            d2.stats.bytes_up.fetch_add(up, Ordering::Relaxed);
            d2.stats.bytes_down.fetch_add(down, Ordering::Relaxed);
            log(&format!(
                "conn udp client={client} dst={dst} rule={} upstream=direct up={up} down={down} duration_ms={} outcome=\"idle timeout\"",
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

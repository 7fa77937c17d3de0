//! Network isolation: with `network: false` nothing gets out, not even to the host.

use std::os::linux::net::SocketAddrExt;

use crate::{Fixture, PY, require_root, run};

#[tokio::test]
async fn tcp_udp_dns_and_host_loopback_fail_without_network() {
    if !require_root("tcp_udp_dns_and_host_loopback_fail_without_network") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let script = format!(
        "import socket\n\
         def tcp(h, p):\n\
         \x20   s = socket.socket(); s.settimeout(3)\n\
         \x20   try:\n\
         \x20       s.connect((h, p)); print('TCP CONNECTED', h, p)\n\
         \x20   except OSError as e: print('tcp failed', h, p, e)\n\
         tcp('1.1.1.1', 443)\n\
         tcp('127.0.0.1', {port})\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         try:\n\
         \x20   u.sendto(b'x', ('8.8.8.8', 53)); print('UDP SENT')\n\
         except OSError as e: print('udp failed', e)\n\
         try:\n\
         \x20   print('DNS RESOLVED', socket.gethostbyname('example.com'))\n\
         except OSError as e: print('dns failed', e)\n"
    );
    std::fs::write(f.ws().dir.join("t.py"), script).unwrap();
    let o = run(&f.spec(&format!("exec {PY} t.py"))).await;
    assert!(
        !o.stdout.contains("CONNECTED")
            && !o.stdout.contains("SENT")
            && !o.stdout.contains("RESOLVED"),
        "{o:?}"
    );
    assert_eq!(o.stdout.matches("tcp failed").count(), 2, "{o:?}");
    assert!(
        o.stdout.contains("udp failed") && o.stdout.contains("dns failed"),
        "{o:?}"
    );
    assert!(
        listener.accept().is_err(),
        "the host listener got a connection"
    );
}

#[tokio::test]
async fn abstract_unix_socket_of_the_host_unreachable() {
    if !require_root("abstract_unix_socket_of_the_host_unreachable") {
        return;
    }
    let f = Fixture::new(1 << 20);
    let name = format!("cmdx-sandbox-test-{}", f.uid);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract");
    listener.set_nonblocking(true).unwrap();
    // Sanity: the host itself can connect.
    std::os::unix::net::UnixStream::connect_addr(&addr).expect("host connect");
    let _ = listener.accept().expect("host accept");
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         try:\n\
         \x20   s.connect('\\0{name}'); print('CONNECTED')\n\
         except OSError as e: print('unix failed', e)\n"
    );
    std::fs::write(f.ws().dir.join("t.py"), script).unwrap();
    let o = run(&f.spec(&format!("exec {PY} t.py"))).await;
    assert!(
        o.stdout.contains("unix failed") && !o.stdout.contains("CONNECTED"),
        "{o:?}"
    );
    assert!(
        listener.accept().is_err(),
        "the host listener got a connection"
    );

    // Even with network on (no netns), the landlock scope keeps the socket out of reach.
    let mut spec = f.spec(&format!("exec {PY} t.py"));
    spec.network = true;
    let o = run(&spec).await;
    assert!(
        o.stdout.contains("unix failed") && !o.stdout.contains("CONNECTED"),
        "network on: {o:?}"
    );
}

/// Private network namespaces are reused by later jobs once a job's cgroup is empty (see the
/// sandbox's `netns` module): a later job in the same namespace must find nothing of the
/// earlier one, not its abstract unix socket (which a forked sleeper kept open until the
/// cgroup kill), nor its UDP port (TCP bind is denied by landlock anyway).
#[tokio::test]
async fn reused_network_namespace_holds_nothing_of_the_previous_job() {
    const TEST: &str = "net::reused_network_namespace_holds_nothing_of_the_previous_job";
    const ALONE: &str = "CMDX_SANDBOX_TEST_ALONE";
    if !require_root(TEST) {
        return;
    }
    // The pool of idle namespaces is per process, and the other tests of this binary take
    // namespaces from it and give theirs back concurrently, burying the first job's: run this
    // test again in a process of its own, where the next job takes the namespace the first
    // one gave back, every time.
    if std::env::var_os(ALONE).is_none() {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", TEST, "--test-threads=1", "--nocapture"])
            .env(ALONE, "1")
            .output()
            .expect("run the test alone");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "alone: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let f = Fixture::new(1 << 20);
    let name = format!("cmdx-netns-reuse-{}", f.uid);
    let first = format!(
        "import os, socket, time\n\
         print(os.readlink('/proc/self/ns/net'))\n\
         a = socket.socket(socket.AF_UNIX); a.bind('\\0{name}'); a.listen()\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 47002))\n\
         if os.fork() == 0:\n\
         \x20   os.setsid(); time.sleep(100)\n\
         print('BOUND')\n"
    );
    let second = format!(
        "import os, socket\n\
         print(os.readlink('/proc/self/ns/net'))\n\
         c = socket.socket(socket.AF_UNIX)\n\
         try:\n\
         \x20   c.connect('\\0{name}'); print('CONNECTED')\n\
         except OSError as e: print('connect failed', e)\n\
         a = socket.socket(socket.AF_UNIX); a.bind('\\0{name}')\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 47002))\n\
         print('REBOUND')\n"
    );
    std::fs::write(f.ws().dir.join("first.py"), first).unwrap();
    std::fs::write(f.ws().dir.join("second.py"), second).unwrap();
    let host = std::fs::read_link("/proc/self/ns/net").expect("host netns");
    let o = run(&f.spec(&format!("exec {PY} first.py"))).await;
    assert!(o.stdout.contains("BOUND"), "{o:?}");
    let ns = o.stdout.lines().next().expect("netns").to_owned();
    assert_ne!(
        std::path::Path::new(&ns),
        host,
        "the job ran in the host's namespace"
    );
    let o = run(&f.spec(&format!("exec {PY} second.py"))).await;
    assert!(
        o.stdout.contains("connect failed")
            && !o.stdout.contains("CONNECTED")
            && o.stdout.contains("REBOUND"),
        "{o:?}"
    );
    assert_eq!(
        o.stdout.lines().next(),
        Some(ns.as_str()),
        "the next job did not get the namespace of the first one: {o:?}"
    );
}

//! Two network namespaces joined by a veth pair, so a test has two hosts
//! with distinct non-loopback addresses on one machine (POSTGRES-TESTING.md,
//! "Two hosts on one machine").
//!
//! Names carry the test process id and a per-test tag, so parallel tests
//! and other test runs on the machine never share one. The addresses
//! [`ADDR_A`] and [`ADDR_B`] exist only inside the namespaces this struct
//! made. Dropping it deletes both namespaces (and the veth pair with them),
//! also when the test panics; anything started inside must be stopped
//! before (declare the [`NetnsPair`] first so it drops last).
//!
//! Needs root and a working `ip netns`; otherwise [`NetnsPair::create`]
//! says why and returns `None`, or panics when `KEYFERRY_REQUIRE_PG=1`.

use std::process::Command;

use super::pg::REQUIRE_PG_ENV;

/// Address of the first host (namespace `a`).
pub const ADDR_A: &str = "10.213.0.1";
/// Address of the second host (namespace `b`).
pub const ADDR_B: &str = "10.213.0.2";
const PREFIX: &str = "24";

pub struct NetnsPair {
    pub a: String,
    pub b: String,
    veth_a: String,
    created: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsPair {
    /// Creates the pair, or says why it cannot and returns `None`.
    pub fn create(tag: &str) -> Option<NetnsPair> {
        let id = format!("{}{tag}", std::process::id());
        let mut pair = NetnsPair {
            a: format!("kf{id}a"),
            b: format!("kf{id}b"),
            veth_a: format!("kv{id}a"),
            created: Vec::new(),
        };
        match pair.setup(&id) {
            Ok(()) => Some(pair),
            Err(reason) => {
                drop(pair);
                if std::env::var(REQUIRE_PG_ENV).as_deref() == Ok("1") {
                    panic!("{REQUIRE_PG_ENV}=1 but network namespaces are not usable: {reason}");
                }
                eprintln!("skipping network-namespace test: {reason} (needs root and `ip netns`)");
                None
            }
        }
    }

    fn setup(&mut self, id: &str) -> Result<(), String> {
        let veth_b = format!("kv{id}b");
        for ns in [self.a.clone(), self.b.clone()] {
            ip(&["netns", "add", &ns])?;
            self.created.push(ns);
        }
        ip(&[
            "link",
            "add",
            &self.veth_a,
            "type",
            "veth",
            "peer",
            "name",
            &veth_b,
        ])?;
        ip(&["link", "set", &self.veth_a, "netns", &self.a])?;
        ip(&["link", "set", &veth_b, "netns", &self.b])?;
        for (ns, dev, addr) in [(&self.a, &self.veth_a, ADDR_A), (&self.b, &veth_b, ADDR_B)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/{PREFIX}"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Sets the second host's end of the link down (`up` false: as if its
    /// cable were pulled; packets to it go nowhere) or up again.
    pub fn set_link_b(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.b, "link", "set", &self.veth_b(), state]).unwrap();
    }

    /// The second host's end of the link (in namespace `b`).
    pub fn veth_b(&self) -> String {
        // setup() names the two ends kv<id>a and kv<id>b.
        let stem = self.veth_a.strip_suffix('a').expect("kv<id>a");
        format!("{stem}b")
    }

    /// `ip netns exec <ns> <program>` as a command to add arguments to.
    pub fn exec(ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

/// Something listening on a TCP port inside a namespace, as the product's
/// web service does on a real node (a Python one-liner that accepts and
/// does nothing). Killed on drop.
pub struct WebService(std::process::Child);

impl WebService {
    pub fn start(ns: &str, addr: &str, port: u16) -> Self {
        let script = format!(
            "import socket, time\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{addr}', {port}))\n\
             s.listen()\n\
             time.sleep(300)\n"
        );
        let child = NetnsPair::exec(ns, std::path::Path::new("python3"))
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start the web-service stand-in");
        std::thread::sleep(std::time::Duration::from_millis(300));
        WebService(child)
    }
}

impl Drop for WebService {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // A veth end still in the root namespace (setup failed half-way)
        // is not removed with the namespaces.
        let _ = ip(&["link", "del", &self.veth_a]);
        for ns in self.created.drain(..) {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

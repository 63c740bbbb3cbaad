//! Network isolation for the tests whose clusters hand out pod and Service addresses:
//! each runs on a thread of its own in a new network namespace holding only `lo` (and
//! the veths a test adds), so no packet to a cluster address can leave the machine. The
//! `skiff` and `kubectl` processes a test starts are forked from that thread and inherit
//! its namespace. Nothing is named or mounted, so nothing is left behind: a namespace
//! goes with the last process and socket in it.

use anyhow::{ensure, Context, Result};
use std::future::Future;
use std::process::{Child, Command, Stdio};

/// Runs `test` in a fresh network namespace on a runtime of its own.
pub fn isolated<F>(test: F) -> Result<()>
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("isolated-test".into())
        .spawn(move || -> Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .context("a network namespace of the test's own (the tests run as root)")?;
            run(Command::new("ip").args(["link", "set", "lo", "up"]))?;
            // Runtime threads are created from this thread, so they share its namespace.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(test)
        })?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.stdin(Stdio::null()).output()?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A second namespace joined to the test's by a veth pair: a client outside the node.
/// It lives as long as its holder process (`sleep`), which is killed by PID on drop.
pub struct Peer {
    holder: Child,
}

impl Peer {
    /// Makes the peer namespace and the link: the test's side gets `node_side`, the
    /// peer `address` (both /24 addresses of one subnet).
    pub fn create(name: &str, node_side: &str, address: &str) -> Result<Peer> {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()?;
        let pid = holder.id().to_string();
        let peer = Peer { holder };
        // `unshare` execs `sleep` once the namespace exists; wait for that.
        let own_ns = std::fs::read_link("/proc/thread-self/ns/net")?;
        for _ in 0..200 {
            if std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != own_ns) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let (here, there) = (format!("{name}-n"), format!("{name}-p"));
        run(Command::new("ip").args([
            "link", "add", &here, "type", "veth", "peer", "name", &there, "netns", &pid,
        ]))?;
        run(Command::new("ip").args(["addr", "add", &format!("{node_side}/24"), "dev", &here]))?;
        run(Command::new("ip").args(["link", "set", &here, "up"]))?;
        peer.exec(&["ip", "addr", "add", &format!("{address}/24"), "dev", &there])?;
        peer.exec(&["ip", "link", "set", &there, "up"])?;
        peer.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(peer)
    }

    /// A command run inside the peer namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["--net=/proc/".to_string() + &self.holder.id().to_string() + "/ns/net"])
            .arg(program);
        command
    }

    fn exec(&self, argv: &[&str]) -> Result<()> {
        run(self.command(argv[0]).args(&argv[1..]))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

//! A throwaway PostgreSQL cluster for the tests: `initdb` and `pg_ctl` from the machine's
//! PostgreSQL (Debian's `postgresql` package, which `.ci/run` installs where missing) in a temp
//! dir, on a free loopback port with its socket dir in the temp dir, stopped with
//! `pg_ctl stop -m immediate` on drop. PostgreSQL refuses to run as root, so under root it runs
//! as `nobody` (through `runuser`), owning its data dir.
//!
//! [`database`] hands each test a fresh database in one cluster per test binary (stopped when the
//! binary exits); the replica tests that restart PostgreSQL start a [`Cluster`] of their own.
//! Durability of PostgreSQL itself is not under test, so the cluster runs with `fsync=off`: a
//! `pg_ctl stop -m immediate` (a crash of PostgreSQL, not of the machine) still loses nothing
//! committed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

/// A running (or stopped) PostgreSQL cluster of the tests.
pub struct Cluster {
    bin: PathBuf,
    /// Holds `data/` (the cluster) and `run/` (socket and log), owned by the server's user.
    dir: tempfile::TempDir,
    port: u16,
    /// `Some(user)` when commands run as that user (we are root).
    run_as: Option<String>,
    running: bool,
}

/// The directory of `initdb`, `pg_ctl` and `psql`: `SONDE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else next to `initdb` on the PATH.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("SONDE_PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    Err(
        "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on the PATH; \
         apt-get install postgresql)"
            .into(),
    )
}

fn id(args: &[&str]) -> Result<u32, String> {
    let out = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| format!("id: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("id {args:?} failed"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// Creates and starts a cluster, or says why it cannot.
    pub fn start() -> Result<Self, String> {
        let bin = bin_dir()?;
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let run_as = if id(&["-u"])? == 0 {
            Some("nobody".to_owned())
        } else {
            None
        };
        let data = dir.path().join("data");
        let run = dir.path().join("run");
        for d in [&data, &run] {
            std::fs::create_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        if let Some(user) = &run_as {
            use std::os::unix::fs::PermissionsExt as _;
            let (uid, gid) = (id(&["-u", user])?, id(&["-g", user])?);
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod: {e}"))?;
            for d in [&data, &run] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", d.display()))?;
            }
        }
        let mut cluster = Self {
            bin,
            dir,
            port: free_port(),
            run_as,
            running: false,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data().display().to_string(),
                "-U",
                "sonde",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        cluster.start_again()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Runs one of PostgreSQL's programs as the cluster's user; its output on failure.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            let log = std::fs::read_to_string(self.run_dir().join("log")).unwrap_or_default();
            Err(format!("{program} {args:?} failed: {text}\n{log}"))
        }
    }

    /// Starts the (stopped) cluster on its port and waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400",
            self.port,
            self.run_dir().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.run_dir().join("log").display().to_string(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the cluster at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&mut self) {
        if self.running {
            let data = self.data().display().to_string();
            if let Err(err) = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]) {
                eprintln!("stopping PostgreSQL: {err}");
            }
            self.running = false;
        }
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://sonde@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self) -> Result<String, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs one SQL command with `psql`, returning its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "sonde",
            ])
            .args(["-d", db, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Where the data lives (for messages).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The cluster shared by the tests of this binary, started on first use.
fn shared() -> Result<&'static Cluster, String> {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    let cluster = SHARED.get_or_init(|| {
        let cluster = Cluster::start()?;
        // Statics are never dropped: stop the cluster when the test binary exits.
        unsafe extern "C" {
            fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
        }
        extern "C" fn stop_shared() {
            if let Some(Ok(cluster)) = SHARED.get() {
                let data = cluster.data().display().to_string();
                let _ = cluster.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
            }
        }
        // Safety: `atexit` takes a plain function to call once at exit; `stop_shared` only reads
        // the initialized static and runs a program.
        unsafe {
            atexit(stop_shared);
        }
        Ok(cluster)
    });
    cluster.as_ref().map_err(Clone::clone)
}

/// A fresh database in this test binary's cluster, as a URL; `None` after skipping `test` when
/// PostgreSQL cannot run here (a failure under CI).
pub fn database(test: &str) -> Option<String> {
    match shared().and_then(Cluster::create_database) {
        Ok(url) => Some(url),
        Err(reason) => {
            super::skip::skip(test, &reason);
            None
        }
    }
}

/// An own cluster for a test that stops and starts it; `None` after skipping `test`.
pub fn own_cluster(test: &str) -> Option<Cluster> {
    match Cluster::start() {
        Ok(cluster) => Some(cluster),
        Err(reason) => {
            super::skip::skip(test, &reason);
            None
        }
    }
}

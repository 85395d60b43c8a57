//! A real browser for the console's tests: Debian's headless Chromium driven over WebDriver by
//! its `chromedriver` (packages `chromium` and `chromium-driver`; `.ci/run` installs them), from
//! Rust with fantoccini. Screenshots go to `target/console-screenshots/`.
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};

/// Where Debian puts them.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Why the browser cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    [CHROMIUM, CHROMEDRIVER]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| {
            format!("{p} is missing: apt-get install -y chromium chromium-driver (as .ci/run does)")
        })
}

/// A chromedriver child process and one browser session, both ended when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `target/console-screenshots`, beside the test binary's profile directory.
fn shots_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, 1400x1000.
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "chromedriver never took a session: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            profile,
            shots: shots_dir(),
        }
    }

    /// Saves a PNG of the page as `<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Waits (up to `limit`) for an element matching `css` whose text satisfies `ok`; panics
    /// naming `what` and the last text seen.
    pub async fn wait_text(
        &self,
        css: &str,
        limit: Duration,
        what: &str,
        ok: impl Fn(&str) -> bool,
    ) -> Element {
        let deadline = Instant::now() + limit;
        let mut last = String::from("(no such element)");
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = el.text().await
            {
                if ok(&text) {
                    return el;
                }
                last = text;
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot("failed").await;
                panic!(
                    "{what}: {css} never matched within {limit:?}; last text: {last:?} (page: {})",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an element matching `css` to exist.
    pub async fn wait_for(&self, css: &str, limit: Duration) -> Element {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await {
                return el;
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot("failed").await;
                panic!(
                    "{css} never appeared within {limit:?} (page: {})",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `<select css>` offers an option with `value`, then selects it (firing
    /// `change` as a person's choice does).
    pub async fn select(&self, css: &str, value: &str, limit: Duration) {
        let option = format!("{css} option[value=\"{value}\"]");
        self.wait_for(&option, limit).await;
        let select = self.client.find(Locator::Css(css)).await.expect(css);
        select.select_by_value(value).await.expect("select");
    }

    /// The whole page's visible text.
    pub async fn body_text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .expect("body")
            .text()
            .await
            .expect("its text")
    }
}

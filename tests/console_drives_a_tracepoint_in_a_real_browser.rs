//! The web console in a real browser (headless Chromium over WebDriver): against a server and the
//! shop example (a real child process with a real agent), a person opens the console, sees the
//! shop's agent, creates a tracepoint through the form on a line picked from the catalog (and sees
//! a bad condition refused beside its field, at its column, as they type), sees it become bound,
//! drives the shop and sees the hit count rise, and deletes it. With tokens on, the page without
//! a token shows a sign-in prompt and none of the tenant's data; with the token it shows it.
//! Screenshots of every page go to `target/console-screenshots/`.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/shop.rs"]
mod shop;

use std::time::{Duration, Instant};

use browser::Browser;
use common::TestServer;
use fantoccini::Locator;

const WAIT: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn checkout(shop: &shop::Shop, agent: &ureq::Agent) {
    let body = br#"{"country":"NZ","items":[{"sku":"tea","qty":2}],"total":100,"user":{"id":"u1","tier":"gold"}}"#;
    let (status, _) = common::send(
        agent,
        "POST",
        &format!("http://{}/checkout", shop.addr),
        Some(body.to_vec()),
        &[],
    );
    assert_eq!(status, 200, "the shop took the order");
}

#[test]
fn a_tracepoint_is_created_watched_and_deleted_from_the_console() {
    if let Some(reason) = browser::missing() {
        common::skip::skip(
            "a_tracepoint_is_created_watched_and_deleted_from_the_console",
            &reason,
        );
        return;
    }
    let server = TestServer::start();
    let service = format!("shop-console-{}", std::process::id());
    let shop = shop::start(&server.grpc, &service);
    let line = shop::checkout_line();
    let deadline = Instant::now() + WAIT;
    while server.get(&format!("/api/sites?service.name={service}")).1["reporting"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the shop's agent never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let http = common::http_agent();

    runtime().block_on(async {
        let b = Browser::start().await;
        let c = &b.client;
        c.goto(&format!("{}/", server.http)).await.expect("open");
        b.wait_text("main", WAIT, "the empty list", |t| {
            t.contains("No tracepoints yet")
        })
        .await;
        b.screenshot("01-tracepoints-empty").await;

        // Agents: the shop, with its language and probe sites.
        c.find(Locator::Css("a[data-nav=agents]"))
            .await
            .expect("nav")
            .click()
            .await
            .expect("click");
        let table = b
            .wait_text("main table", WAIT, "the agents table", |t| {
                t.contains(&service)
            })
            .await;
        let text = table.text().await.expect("text");
        assert!(text.contains("rust"), "language shown: {text}");
        assert!(text.contains("watch stream"), "connection shown: {text}");
        b.screenshot("02-agents").await;

        // Create: service, then a file and a line from the catalog.
        c.goto(&format!("{}/#/new", server.http))
            .await
            .expect("open the form");
        b.select("#f-service", &service, WAIT).await;
        b.select("#f-file", "examples/shop.rs", WAIT).await;
        b.select("#f-line-pick", &line.to_string(), WAIT).await;
        let vars = b
            .wait_text("#vars", WAIT, "the variables in scope", |t| {
                t.contains("order") && t.contains("charged")
            })
            .await;
        assert!(vars.text().await.unwrap().contains("discount"));
        let path = c.find(Locator::Css("#f-path")).await.unwrap();
        assert_eq!(
            path.prop("value").await.unwrap().as_deref(),
            Some("examples/shop.rs")
        );
        c.find(Locator::Css("#f-metric"))
            .await
            .unwrap()
            .send_keys("console_checkouts")
            .await
            .unwrap();

        // A bad condition: the server's error appears beside the field, with its column.
        let condition = c.find(Locator::Css("#f-condition")).await.unwrap();
        condition.send_keys("order.total >").await.unwrap();
        let error = b
            .wait_text("#f-condition-error", WAIT, "the condition's error", |t| {
                t.contains("column")
            })
            .await;
        assert!(error.is_displayed().await.unwrap());
        assert_eq!(
            condition.attr("aria-invalid").await.unwrap().as_deref(),
            Some("true")
        );
        let form_error = c.find(Locator::Css("#form-error")).await.unwrap();
        assert!(
            !form_error.is_displayed().await.unwrap(),
            "the error is beside its field, not at the form's foot"
        );
        b.screenshot("03-form-validation-error").await;
        condition.clear().await.unwrap();
        condition.send_keys("order.total > 0").await.unwrap();
        let deadline = Instant::now() + WAIT;
        while error.is_displayed().await.unwrap() {
            assert!(Instant::now() < deadline, "the error never went away");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let preview = c.find(Locator::Css("#cli")).await.unwrap();
        let command = preview.text().await.unwrap();
        assert!(
            command.contains(&format!("examples/shop.rs:{line}"))
                && command.contains("--metric counter:console_checkouts")
                && command.contains(&format!("--target service.name={service}")),
            "{command}"
        );
        b.screenshot("04-form-ready").await;
        assert!(
            server.ids(&[]).is_empty(),
            "checking as one types stores nothing"
        );
        c.find(Locator::Css("#save"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();

        // The detail page: bound, then hits rise as the shop takes orders.
        b.wait_text("#bindings", WAIT, "the binding", |t| t.contains("bound"))
            .await;
        let ids = server.ids(&[]);
        assert_eq!(ids.len(), 1, "created once");
        let url = c.current_url().await.unwrap();
        assert!(
            url.as_str().ends_with(&format!("#/tracepoint/{}", ids[0])),
            "{url}"
        );
        for _ in 0..5 {
            checkout(&shop, &http);
        }
        b.wait_text("#live-hits", WAIT, "the hit count", |t| {
            t.lines()
                .last()
                .and_then(|n| n.replace(',', "").parse::<u64>().ok())
                .is_some_and(|n| n >= 5)
        })
        .await;
        for _ in 0..5 {
            checkout(&shop, &http);
        }
        b.wait_text("#live-hits", WAIT, "the hit count rising", |t| {
            t.lines()
                .last()
                .and_then(|n| n.replace(',', "").parse::<u64>().ok())
                .is_some_and(|n| n >= 10)
        })
        .await;
        b.screenshot("05-tracepoint-live").await;

        // The list shows it bound with its hits; delete it from there.
        c.goto(&format!("{}/#/tracepoints", server.http))
            .await
            .unwrap();
        let row = b
            .wait_text("tbody tr", WAIT, "the list's row", |t| {
                t.contains("1 of 1 bound")
            })
            .await;
        let text = row.text().await.unwrap();
        assert!(text.contains(&format!("examples/shop.rs:{line}")), "{text}");
        b.screenshot("06-tracepoints").await;
        row.find(Locator::Css("button.danger"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.accept_alert().await.expect("the confirmation");
        b.wait_text("main", WAIT, "the emptied list", |t| {
            t.contains("No tracepoints yet")
        })
        .await;
        assert!(server.ids(&[]).is_empty(), "deleted");
        c.clone().close().await.ok();
    });
    drop(shop);
}

#[test]
fn without_a_token_the_console_asks_for_one_and_shows_nothing() {
    if let Some(reason) = browser::missing() {
        common::skip::skip(
            "without_a_token_the_console_asks_for_one_and_shows_nothing",
            &reason,
        );
        return;
    }
    let server = TestServer::start_with(|c| {
        c.admin_token = Some("admin-secret".into());
        c.read_token = Some("read-secret".into());
    });
    let admin = [("authorization", "Bearer admin-secret")];
    let (status, json) = server.request(
        "POST",
        "/api/tracepoints",
        Some(r#"{"tracepoint": {"path": "src/secret_place.rs", "line_number": 7}}"#),
        &admin,
    );
    assert_eq!(status, 200, "{json}");

    runtime().block_on(async {
        let b = Browser::start().await;
        let c = &b.client;
        c.goto(&format!("{}/", server.http)).await.expect("open");
        b.wait_for("#signin #token", WAIT).await;
        let text = b.body_text().await;
        assert!(text.contains("Sign in"), "{text}");
        assert!(
            !text.contains("secret_place"),
            "no data without a token: {text}"
        );
        assert!(c.find(Locator::Css("main table")).await.is_err());
        b.screenshot("07-sign-in").await;

        // A wrong token is refused and still shows nothing.
        let token = c.find(Locator::Css("#token")).await.unwrap();
        token.send_keys("wrong").await.unwrap();
        c.find(Locator::Css("#signin button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait_text("#signin .error", WAIT, "the refusal", |t| {
            t.contains("credentials")
        })
        .await;
        assert!(!b.body_text().await.contains("secret_place"));

        // The read token shows the tenant's tracepoints.
        let token = c.find(Locator::Css("#token")).await.unwrap();
        token.send_keys("read-secret").await.unwrap();
        c.find(Locator::Css("#signin button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait_text("main table", WAIT, "the list", |t| {
            t.contains("src/secret_place.rs:7")
        })
        .await;
        b.screenshot("08-signed-in").await;
        c.clone().close().await.ok();
    });
}

//! Kill the standalone process with SIGKILL in the middle of a load, restart it on the same data, and
//! require that every accepted order reaches a definite state and that I1–I5 hold.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Server {
    child: Child,
    base: String,
}

fn start(data_dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .arg("serve")
        .env("ORDERLY_DATA_DIR", data_dir)
        .env("ORDERLY_HTTP_ADDR", "127.0.0.1:0")
        .env("ORDERLY_LOG", "warn")
        // A cart cut off by the kill between its pending view and its create is settled by its
        // reservation check: short, so the test need not wait the seed's 10 s.
        .env("ORDERLY_FLOW__RESERVATION_CHECK_DELAY_MS", "2000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("orderly starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("reads the listening line");
    let address = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line: {line}"));
    Server { base: format!("http://{address}"), child }
}

fn token(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .arg("token")
        .args(args)
        .env("ORDERLY_DATA_DIR", data_dir)
        .output()
        .expect("token runs");
    assert!(output.status.success());
    String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
}

fn order_body(uid: u64, commodity: u64, num: u64, pay_at_once: bool) -> Value {
    let (shop, price) = if commodity == 1 { (100_001, 29.99) } else { (100_002, 49.99) };
    json!({
        "uid": uid, "to_uid": uid, "origin_price": 0, "actual_price": 0, "pay_at_once": pay_at_once,
        "commodity_details": [{"actual_price": price, "commodity_id": commodity, "good_type": 0, "page_type": 0,
                               "prices": price, "user_id": shop, "num": num}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_load_then_restarted_loses_no_accepted_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut server = start(&data);
    let admin = token(&data, &["--admin"]);
    let http = reqwest::Client::new();
    let catalog = json!({"commodities": [
        {"commodity_id": 1, "shop_id": 100001, "price": 29.99, "add_stock": 100000},
        {"commodity_id": 2, "shop_id": 100002, "price": 49.99, "add_stock": 100000}
    ]});
    let loaded =
        http.post(format!("{}/api/admin/catalog", server.base)).bearer_auth(&admin).json(&catalog).send().await;
    assert_eq!(loaded.expect("catalog request").status(), 200);

    // Load: 8 buyers place orders in a closed loop until the process dies under them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for uid in 1..=8u64 {
        let (http, base, stop) = (http.clone(), server.base.clone(), Arc::clone(&stop));
        let bearer = token(&data, &["--uid", &uid.to_string()]);
        clients.push(tokio::spawn(async move {
            let mut accepted: Vec<(String, String)> = Vec::new();
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) && round < 10_000 {
                round += 1;
                let body = order_body(uid, 1 + round % 2, 1 + round % 3, round.is_multiple_of(3));
                let sent = http.post(format!("{base}/api/orders")).bearer_auth(&bearer).json(&body).send().await;
                let Ok(response) = sent else { break };
                if response.status() == 200 {
                    let answer: Value = response.json().await.expect("json answer");
                    for number in answer["data"]["order_no"].as_array().expect("order numbers") {
                        accepted.push((bearer.clone(), number.as_str().expect("string").to_owned()));
                    }
                }
            }
            accepted
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    stop.store(true, Ordering::Relaxed);
    let mut accepted = Vec::new();
    for client in clients {
        accepted.extend(client.await.expect("client task"));
    }
    assert!(accepted.len() > 20, "the load got going before the kill ({} accepted)", accepted.len());

    // Restart on the same data: every accepted order must be there and become definite.
    let mut server = start(&data);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (bearer, number) in &accepted {
        loop {
            let response = http.get(format!("{}/api/orders/{number}", server.base)).bearer_auth(bearer).send().await;
            let answer: Value = response.expect("poll").json().await.expect("json");
            assert_eq!(answer["status"], 200, "accepted order {number} lost: {answer}");
            let state = answer["data"]["state"].as_str().unwrap_or_default().to_owned();
            let paying = answer["data"]["payment"]["state"] == "pending";
            if state != "pending" && !paying {
                assert!(["to_pay", "paid", "rejected"].contains(&state.as_str()), "{number}: {state}");
                break;
            }
            assert!(Instant::now() < deadline, "{number} still {state} after a minute");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The carts the kill cut off without an answer are not in `accepted`: their creates and reservation
    // checks may still be queued. Quiet once both queues are empty (unpaid timeouts stay queued for
    // minutes; they change nothing the audit compares).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bus = admin_get(&http, &format!("{}/api/admin/bus", server.base), &admin).await;
        let queues = bus["data"]["queued"].as_array().expect("queues");
        let waiting: u64 = queues
            .iter()
            .filter(|q| q[0] == "create_order" || q[0] == "reservation_check")
            .filter_map(|q| q[1].as_u64())
            .sum();
        if waiting == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "creates and checks still queued after a minute: {bus}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Quiet now (no traffic, creates and checks done): every invariant is owed.
    let audit = admin_get(&http, &format!("{}/api/admin/audit?quiet=true", server.base), &admin).await;
    let report = &audit["data"]["report"];
    assert_eq!(report["violations"], json!([]), "audit: {audit:#}");
    let rows = report["stock"].as_array().expect("rows");
    let sold: u64 = rows.iter().map(|r| r["sold"].as_u64().unwrap_or(0)).sum();
    let available: u64 = rows.iter().map(|r| r["available"].as_u64().unwrap_or(0)).sum();
    assert!(sold > 0 && available > 0, "the kill landed while stock was still on sale");
    server.child.kill().expect("stop");
    server.child.wait().expect("reaped");

    // The offline audit on the stopped data agrees.
    let status = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .arg("audit")
        .env("ORDERLY_DATA_DIR", &data)
        .env("ORDERLY_LOG", "warn")
        .status()
        .expect("audit runs");
    assert!(status.success(), "orderly audit found violations");
}

/// An admin GET's whole answer.
async fn admin_get(http: &reqwest::Client, url: &str, admin: &str) -> Value {
    let answer = http.get(url).bearer_auth(admin).send().await.expect("admin request");
    answer.json().await.expect("json")
}

//! Apps from a database: the real PostgreSQL and MariaDB on 127.0.0.1 (started by `.ci/run`
//! when they are not running). Rows created, changed, disabled and deleted take effect on two
//! running nodes within the refresh interval; a table that cannot be read keeps the apps read
//! before serving. The table is the documented one (`examples/app-database/*.sql`).

use std::time::Duration;

use serde_json::json;
use sqlx::Executor;

use crate::support::*;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";
const MARIADB: &str = "mysql://root@127.0.0.1:3306/test";

async fn exec(url: &str, sql: &str) {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        pool.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    } else {
        let pool = sqlx::MySqlPool::connect(url)
            .await
            .expect("MariaDB at 127.0.0.1:3306");
        pool.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        pool.close().await;
    }
}

/// Waits until connecting with `key` gives `expected` (`None`: established).
async fn until_connect(server: &TestServer, key: &str, expected: Option<u16>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = Client::try_connect_code(&server.ws_url(key, "protocol=7")).await;
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key}: {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn api(server: &TestServer, id: &str, key: &str, secret: &str) -> Api {
    Api {
        base: format!("http://{}", server.addr),
        app_id: id.into(),
        key: key.into(),
        secret: secret.into(),
    }
}

/// The value of one series in the node's `/metrics` (0 when it is not there).
async fn metric(server: &TestServer, series: &str) -> f64 {
    let text = raw_request("GET", &server.url("/metrics"), String::new())
        .await
        .text;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn apps_follow_the_table(url: &str, schema: &str) {
    let table = format!(
        "resound_apps_it_{}",
        resound::protocol::SocketId::random()
            .to_string()
            .replace('.', "_")
    );
    exec(url, &schema.replace("resound_apps", &table)).await;
    exec(
        url,
        &format!(
            "INSERT INTO {table} (id, app_key, secret, enabled, settings) VALUES \
             ('9101', 'db-key-a', 'db-secret-a', TRUE, '{{\"enable_client_messages\": true}}')"
        ),
    )
    .await;
    let toml = TestConfig::new()
        .more(&format!(
            "[app_database]\nurl = \"{url}\"\ntable = \"{table}\"\nrefresh_ms = 200"
        ))
        .toml();
    let mut a = TestServer::start(&toml).await;
    let mut b = TestServer::start(&toml).await;

    // Read at start, on both nodes, beside the file's app.
    let mut on_a = Client::connect(&a.ws_url("db-key-a", "protocol=7")).await;
    let mut on_b = Client::connect(&b.ws_url("db-key-a", "protocol=7")).await;
    a.client().await.assert_alive("the file's app").await;
    on_b.subscribe("news").await;
    let reply = api(&a, "9101", "db-key-a", "db-secret-a")
        .post("/events", &json!({"name":"n","channel":"news","data":"1"}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // A changed secret applies within the refresh interval.
    exec(
        url,
        &format!("UPDATE {table} SET secret = 'db-secret-b' WHERE id = '9101'"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = api(&b, "9101", "db-key-a", "db-secret-b")
            .post("/events", &json!({"name":"n","channel":"news","data":"2"}))
            .await;
        if reply.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "new secret refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    on_b.recv_event("n").await;

    // A new row serves; disabling it closes its sockets with 4003.
    until_connect(&a, "db-key-c", Some(4001)).await;
    exec(
        url,
        &format!(
            "INSERT INTO {table} (id, app_key, secret, enabled) VALUES \
             ('9103', 'db-key-c', 'db-secret-c', TRUE)"
        ),
    )
    .await;
    until_connect(&a, "db-key-c", None).await;
    let mut c = Client::connect(&a.ws_url("db-key-c", "protocol=7")).await;
    exec(
        url,
        &format!("UPDATE {table} SET enabled = FALSE WHERE id = '9103'"),
    )
    .await;
    assert_eq!(c.closed().await, Some(4003), "a disabled app's socket");
    until_connect(&a, "db-key-c", Some(4003)).await;

    // The table cannot be read: the apps read before keep serving, and /metrics shows the
    // failing reads (what an alert watches) while the last good read's figures stay.
    let errors_before = metric(&a, "resound_app_database_reads_total{outcome=\"error\"}").await;
    assert!(metric(&a, "resound_app_database_reads_total{outcome=\"ok\"}").await >= 1.0);
    assert_eq!(metric(&a, "resound_app_database_apps").await, 2.0);
    assert!(metric(&a, "resound_app_database_changes_total{kind=\"added\"}").await >= 1.0);
    let away = format!("{table}_away");
    exec(url, &format!("ALTER TABLE {table} RENAME TO {away}")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&a, "resound_app_database_reads_total{outcome=\"error\"}").await
        < errors_before + 2.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failed reads not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&a, "resound_app_database_apps").await, 2.0);
    until_connect(&a, "db-key-a", None).await;
    on_a.assert_alive("a socket during the outage").await;
    exec(url, &format!("ALTER TABLE {away} RENAME TO {table}")).await;

    // A deleted row closes its sockets with 4001.
    exec(url, &format!("DELETE FROM {table} WHERE id = '9101'")).await;
    let deadline = Duration::from_secs(10);
    let code = tokio::time::timeout(deadline, async {
        loop {
            if let Some(code) = on_a.closed().await {
                return code;
            }
        }
    })
    .await
    .expect("closed within the refresh interval");
    assert_eq!(code, 4001);
    until_connect(&b, "db-key-a", Some(4001)).await;

    exec(url, &format!("DROP TABLE {table}")).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn postgres_apps_follow_the_table() {
    apps_follow_the_table(
        POSTGRES,
        include_str!("../../examples/app-database/postgres.sql"),
    )
    .await;
}

#[tokio::test]
async fn mariadb_apps_follow_the_table() {
    apps_follow_the_table(
        MARIADB,
        include_str!("../../examples/app-database/mysql.sql"),
    )
    .await;
}

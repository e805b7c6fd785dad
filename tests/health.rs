//! `/healthz`, `/readyz` and the exit of an unhealthy host.

use std::time::{Duration, Instant};

use crate::support::http::{get, wait_status};
use crate::support::kafka::Env;
use sandpiper::app::App;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_the_broker_and_liveness_stays_up() {
    let env = Env::new(1, 2);
    let config = env.config_with_admin("uppercase", "");
    let app = App::start(config).await.expect("starts");
    let addr = app.admin.expect("admin listener");
    let body = wait_status(addr, "/readyz", 200).await;
    assert_eq!(body["ok"], true);
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(
        (status, body["ok"].clone()),
        (200, serde_json::Value::Bool(true))
    );

    env.cluster.broker_down(1).expect("down");
    let body = wait_status(addr, "/readyz", 503).await;
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("not connected"), "{reasons}");
    let (status, _) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "a broker outage is not a reason to restart");

    env.cluster.broker_up(1).expect("up");
    wait_status(addr, "/readyz", 200).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fatal_pipeline_fails_healthz_and_the_host_exits_after_the_grace_period() {
    let env = Env::new(1, 1);
    let mut config = env.config_with_admin("uppercase", "");
    config.unhealthy_exit_secs = 1;
    let app = App::start(config).await.expect("starts");
    let addr = app.admin.expect("admin listener");
    app.health.pipelines()[0].set_fatal("worker of t/0 panicked: test".into());
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body["reasons"].to_string().contains("panicked"), "{body}");
    let never = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), app.supervise(&never)).await;
    let error = result
        .expect("supervise returned")
        .expect_err("the host must exit");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(format!("{error:#}").contains("panicked"), "{error:#}");
    app.stop().await;
}

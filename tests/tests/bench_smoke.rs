//! `make bench`'s load generator and scenarios, at a smoke size, so that they keep working: the run must
//! finish and every count it reports must add up. Deliveries are counted as distinct (conversation,
//! number) per receiver (`tests::load::Recorder`), so a repeated frame cannot make up for a lost one. No
//! speed is judged here (that is `make bench`'s job).

use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;
use tests::promise;

#[test]
fn the_benchmarks_run_at_smoke_size_and_their_counts_add_up() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let debug = root.join("target").join("debug");
    let out = std::env::temp_dir().join(format!("bench-smoke-{}", uuid::Uuid::new_v4().simple()));
    let status = Command::new(debug.join("bench"))
        .arg("--smoke")
        // Centrifugo is built only by `make bench` (infra/local/bench-tools.sh); its client is unit-tested.
        .args(["--scenarios", "idle,scale,latency,storm"])
        .arg("--bin-dir")
        .arg(&debug)
        .arg("--out")
        .arg(&out)
        .status()
        .context("run `cargo build --bins` first (`make test` does)")?;
    ensure!(status.success(), "bench --smoke failed: {status}");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json"))?)?;
    let summary = std::fs::read_to_string(out.join("summary.md"))?;
    // `bench summary` draws the same tables again from the results alone.
    let again = Command::new(debug.join("bench")).arg("summary").arg(out.join("results.json")).output()?;
    ensure!(again.status.success(), "bench summary failed: {}", String::from_utf8_lossy(&again.stderr));
    ensure!(String::from_utf8_lossy(&again.stdout) == summary, "bench summary drew another summary");
    std::fs::remove_dir_all(&out)?;

    let idle = &results["idle"];
    ensure!(idle["gateway_connected"] == 200 && idle["floor_connected"] == 200, "idle connections: {idle}");
    ensure!(idle["gateway_kib_per_connection"].as_f64().is_some_and(|k| k > 0.0), "no memory measured: {idle}");
    let scale = &results["scale"];
    ensure!(scale["connected"] == 300 && scale["gateways"] == 3, "scale-out connections: {scale}");
    promise!(scale["sampled"] == 30 && scale["received"] == 30, "scale-out sample: {scale}");
    ensure!(summary.contains("| 2 scale-out"), "the summary lacks the scale-out:\n{summary}");
    let latency = results["latency"].as_array().context("no latency runs")?;
    ensure!(latency.len() == 1, "latency runs: {latency:?}");
    let run = &latency[0];
    ensure!(run["sent"].as_u64().is_some_and(|n| n > 0), "nothing sent: {run}");
    promise!(run["received"] == run["sent"], "sent and received differ: {run}");
    promise!(run["errors"] == 0, "sends answered with errors: {run}");
    ensure!(run["floor"]["count"].as_u64().is_some_and(|n| n > 0), "the Kafka floor timed nothing: {run}");
    let groups = results["groups"].as_array().context("no group runs")?;
    let g = groups.first().context("no group run")?;
    let (sent, delivered) = (g["sent"].as_u64().unwrap_or(0), g["received"].as_u64().unwrap_or(0));
    ensure!(sent > 0, "groups of 5: nothing sent: {g}");
    promise!(delivered == sent * 4, "groups of 5: {sent} sent, {delivered} delivered: {g}");
    let storm = &results["storm"];
    ensure!(storm["expected"] == 120, "reconnect storm: {storm}");
    promise!(storm["received"] == storm["expected"], "reconnect storm: {storm}");
    ensure!(summary.contains("| 5 reconnect storm"), "the summary lacks the storm:\n{summary}");
    Ok(())
}

#[test]
fn the_transaction_cost_benchmark_runs_and_reads_every_committed_record() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(root.join("target").join("debug").join("bench"))
        .args(["kafka-transactions", "--rate", "40", "--seconds", "2"])
        .output()
        .context("run `cargo build --bins` first (`make test` does)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // It fails when its read_committed reader does not read what was committed.
    ensure!(output.status.success(), "bench kafka-transactions failed: {}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| one partition") || l.starts_with("| every partition"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    ensure!(rows.len() == 3, "three ways expected:\n{stdout}");
    for row in rows {
        let records: u64 = row[2].parse().with_context(|| format!("records in {row:?}"))?;
        let transactions: u64 = row[3].parse().with_context(|| format!("transactions in {row:?}"))?;
        ensure!(records >= 40 && transactions > 0 && transactions <= records, "counts: {row:?}");
    }
    Ok(())
}

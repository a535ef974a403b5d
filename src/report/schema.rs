//! The report's data model: the serde structs and enums a JSON report is made of, field by
//! field the contract that `schemas/report.schema.json` states (a change to one is a change to
//! the other, and `SCHEMA_VERSION` goes up when a field changes meaning or disappears). Every
//! other format renders from these structs. This file must not compute scores, render a
//! format or write files; it only reads a saved report back.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::curve::CurvePoint;
use crate::error::{Error, Result};

/// Declares a closed set of values the report writes as fixed strings: the enum, its serde
/// names, `as_str` and `Display` (both give the JSON string).
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// Where a scan stands.
    #[derive(Default)]
    ScanStatus {
        /// Checkpoints remain.
        #[default]
        Running = "running",
        /// Every checkpoint has its result.
        Complete = "complete",
        /// Ctrl-C or SIGTERM stopped the scan; finished checkpoints are kept.
        Interrupted = "interrupted",
    }
}

string_enum! {
    /// What became of a checkpoint, or of one seed's run of it.
    #[derive(Default)]
    Status {
        /// It ran its whole budget.
        #[default]
        Ok = "ok",
        /// An error ended it (a broken file, a bug).
        Failed = "failed",
        /// The training loss became NaN or infinite.
        Diverged = "diverged",
        /// A race stopped it early.
        Stopped = "stopped",
    }
}

string_enum! {
    /// Why one seed's run of a checkpoint that others finished did not finish.
    SeedStatus {
        /// An error ended it (a bug, caught).
        Failed = "failed",
        /// The training loss became NaN or infinite.
        Diverged = "diverged",
    }
}

string_enum! {
    /// How the target loss was chosen.
    #[derive(Default)]
    TargetKind {
        /// `--target-loss`.
        Loss = "loss",
        /// `--target-drop`: the value is the loss drop required.
        Drop = "drop",
        /// The median of the finished runs' final losses.
        #[default]
        MedianFinal = "median_final",
    }
}

string_enum! {
    /// Where the task gap's pre-training loss comes from.
    GapSource {
        /// The loss on `--pretrain-sample`, measured by the scan.
        PretrainSample = "pretrain_sample",
        /// The last loss in each snapshot's trainer_state.json.
        TrainerState = "trainer_state",
    }
}

string_enum! {
    /// What the task gap does along the series, at 95%.
    #[derive(Default)]
    Trend {
        Widens = "widens",
        Narrows = "narrows",
        /// The slope's interval holds zero, or there are only two snapshots.
        #[default]
        NoClearTrend = "no clear trend",
    }
}

string_enum! {
    /// The unit of every time-to-target figure: "device-hours" when the device is a CPU.
    HoursUnit {
        DeviceHours = "device-hours",
        GpuHours = "GPU-hours",
    }
}

string_enum! {
    /// The kind of device a scan fine-tuned on.
    DeviceKind {
        Cpu = "cpu",
        Cuda = "cuda",
    }
}

/// Bumped whenever a field changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: Tool,
    /// "running" while checkpoints remain, "complete" at the end, "interrupted" when Ctrl-C
    /// or SIGTERM stopped the scan (finished checkpoints are kept; `--resume` completes it).
    pub status: ScanStatus,
    pub settings: serde_json::Value,
    pub device: DeviceInfo,
    /// "device-hours" on a CPU, "GPU-hours" on a GPU.
    pub hours_unit: HoursUnit,
    /// The target eval loss when one loss is shared by all checkpoints (not with --target-drop).
    pub target_loss: Option<f64>,
    /// How the target was chosen: kind "loss", "drop" (value = the loss drop required) or "median_final".
    pub target: Option<TargetInfo>,
    /// `--price-per-gpu-hour`, when given (then `cost_to_target` is filled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_device_hour: Option<f64>,
    pub checkpoints: Vec<CheckpointReport>,
    /// The pre-training loss log (from trainer_state.json) and where it flattens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretraining: Option<Pretraining>,
    /// Gates asked for on the command line, evaluated on the results so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    /// Checkpoint names, best first (failed checkpoints are not ranked; checkpoints a race
    /// stopped come after all that ran the full budget).
    pub ranking: Vec<String>,
    /// With `--strategy race`: the rungs and the training spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race: Option<RaceInfo>,
    /// How far the task is from the pre-training data, across the series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_distance: Option<TaskDistance>,
    /// With --ranks / --lrs: every variant's ranking and what changes with rank and rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepInfo>,
    /// The fine-tune the ranking answers for (`--budget`); absent for a simulated series,
    /// which runs its own budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetInfo>,
    /// The probe's own ranking, when `ranking` is the forecast one for a longer budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measured_ranking: Vec<String>,
}

/// The fine-tune the ranking answers for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetInfo {
    /// As asked: "750 updates", "3 epochs" (the default), "20000000 tokens", "2 device-hours".
    pub asked: String,
    /// The probe's length in updates (--steps).
    pub probe_steps: usize,
    /// The budget in updates (the largest over the checkpoints when it depends on their
    /// tokenizer or shape).
    pub steps: usize,
    /// The budget is longer than the probe: `ranking` and every checkpoint's `forecast` come
    /// from the curve model.
    pub forecast: bool,
    /// The target at the budget.
    pub target: Option<TargetInfo>,
    /// The leader and the runner-up at the budget are told apart at 95% (null: fewer than two
    /// ranked).
    pub settled: Option<bool>,
    /// When they are not: about how many more probe updates would separate them (a rough
    /// estimate: intervals taken to narrow with the log of how far the forecast reaches).
    pub more_updates_to_settle: Option<usize>,
    /// The budget is longer than the probe but some snapshot's curve cannot be forecast to it:
    /// which and why, "checkpoint-800: its fall has not slowed yet: ..." (then `ranking` is the
    /// probe's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_forecast: Option<String>,
    /// `--until-settled`: the rounds that continued the leaders beyond the probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<SettleInfo>,
}

/// What `--until-settled` did: each round continued the contenders (the leader at the budget
/// and those tied with it) to `step`; `updates_trained` counts their updates beyond the probe,
/// every seed included.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SettleInfo {
    pub rounds: Vec<SettleRound>,
    pub updates_trained: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SettleRound {
    pub step: usize,
    pub contenders: Vec<String>,
}

/// A checkpoint at the budget: forecast by the curve model beyond the probe, measured within it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ForecastReport {
    pub budget_steps: usize,
    /// The loss at the budget is forecast by the curve model (the budget lies beyond the probe).
    pub forecast: bool,
    /// The steps to target are forecast (the probe did not get there).
    #[serde(default)]
    pub steps_forecast: bool,
    pub eval_loss: Option<f64>,
    pub eval_loss_ci95: Option<[f64; 2]>,
    pub target_loss: Option<f64>,
    /// Within the budget (null: not within it).
    pub steps_to_target: Option<f64>,
    pub steps_to_target_ci95: Option<[f64; 2]>,
    pub device_hours_to_target: Option<f64>,
    pub device_hours_to_target_ci95: Option<[f64; 2]>,
    pub rank: Option<usize>,
    pub tied_with_best: bool,
    /// [step, eval loss] of the forecast curve from the end of the probe to the budget (mean
    /// over seeds; empty when nothing is forecast).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<[f64; 2]>,
}

/// A sweep over LoRA ranks and learning rates. The report's own ranking and checkpoints are
/// the main variant's (the first rank and the first rate).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepInfo {
    pub ranks: Vec<usize>,
    pub lrs: Vec<f64>,
    pub main_rank: usize,
    pub main_lr: f64,
    /// The one target every variant is scored against (the main variant's).
    pub target_loss: Option<f64>,
    /// In grid order: ranks outermost.
    pub variants: Vec<SweepVariant>,
    /// Per snapshot, in step order.
    pub checkpoints: Vec<SweepCheckpoint>,
    /// The winner differs between ranks (at the main rate) / between rates (at the main rank)
    /// beyond seed noise: some variant's winner is significantly slower, at another variant's
    /// settings, than that variant's winner (95% intervals apart).
    pub winner_changes_with_rank: bool,
    pub winner_changes_with_lr: bool,
    /// The findings in plain words.
    pub summary: Vec<String>,
}

/// One (rank, lr) of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepVariant {
    pub rank: usize,
    pub lr: f64,
    pub status: ScanStatus,
    pub ranking: Vec<String>,
    pub checkpoints: Vec<SweepPoint>,
    /// Every checkpoint as this variant measured it (curves of every seed, timings,
    /// fingerprints), so `--resume` can reuse it; empty for the main variant, whose are the
    /// report's own `checkpoints`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<CheckpointReport>,
}

/// One snapshot at one (rank, lr).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepPoint {
    pub name: String,
    pub status: Status,
    pub rank: Option<usize>,
    /// The target was reached within the budget (measured, not extrapolated).
    pub reached: bool,
    pub steps_to_target: Option<f64>,
    pub device_hours_to_target: Option<f64>,
    /// Its 95% interval (several seeds, or a forecast).
    #[serde(default)]
    pub device_hours_ci95: Option<[f64; 2]>,
    pub final_eval_loss: Option<f64>,
    /// [step, eval loss] of the first seed's run.
    pub eval_curve: Vec<[f64; 2]>,
}

/// What the sweep says about one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepCheckpoint {
    pub name: String,
    /// The smallest rank that reaches the target within the budget, at the main rate.
    pub smallest_rank: Option<usize>,
    /// Device-hours to target at each rank (as `ranks`), at the main rate.
    pub hours_by_rank: Vec<Option<f64>>,
    /// The rate with the fewest device-hours to target (else the lowest final eval loss), at
    /// the main rank.
    pub best_lr: Option<f64>,
    /// The other rates whose device-hours interval overlaps the best rate's: not significantly
    /// slower (with one seed a measured time has no interval, so none is).
    #[serde(default)]
    pub best_lr_tied_with: Vec<f64>,
    /// Device-hours to target at each rate (as `lrs`), at the main rank.
    pub hours_by_lr: Vec<Option<f64>>,
}

/// The task gap (zero-shot task loss minus pre-training loss) across the series.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskDistance {
    /// Where the pre-training loss comes from.
    pub source: GapSource,
    /// Least-squares slope of the gap against the step, per 1,000 steps.
    pub gap_slope_per_1k_steps: f64,
    /// Its 95% confidence interval (Student's t, n - 2 degrees of freedom); null with two snapshots.
    #[serde(default)]
    pub slope_ci95: Option<[f64; 2]>,
    pub first_gap: f64,
    pub last_gap: f64,
    /// Widens or narrows when the interval excludes zero.
    #[serde(default)]
    pub trend: Trend,
    /// trend is "widens".
    pub widening: bool,
    pub summary: String,
}

/// How a race went: where it compared checkpoints (each stops a checkpoint only when its
/// forecast interval lies beyond the leader's, `score::race`) and how many updates it trained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaceInfo {
    /// Updates at which the checkpoints were compared; the last is the full budget.
    pub rungs: Vec<usize>,
    /// Updates trained over all checkpoints and seeds.
    pub steps_trained: usize,
    /// The full budget: checkpoints x seeds x steps (a simulated run that converges stops
    /// earlier, in a full scan too).
    pub steps_full_budget: usize,
}

/// A checkpoint a race stopped: at which update and rung, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoppedInfo {
    pub at_step: usize,
    pub rung: usize,
    pub reason: String,
}

impl Report {
    /// Reads a JSON report, refusing other schema versions.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::input(path, format!("cannot read report: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::input(path, format!("invalid JSON: {e}")))?;
        let version = value.get("schema_version").and_then(|v| v.as_u64());
        if version != Some(SCHEMA_VERSION as u64) {
            return Err(Error::input(
                path,
                format!("not a plasticity report of schema version {SCHEMA_VERSION} (found {version:?})"),
            ));
        }
        serde_json::from_value(value).map_err(|e| Error::input(path, format!("invalid report: {e}")))
    }
}

/// A complete report with no checkpoints, for unit tests to fill in.
/// A CI gate a flag set, and whether the report passed it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gate {
    /// The flag that set it, e.g. "fail-if-last-slower".
    pub name: String,
    pub threshold: f64,
    /// The measured value compared with the threshold (None: not measurable, counts as failed).
    pub value: Option<f64>,
    pub passed: bool,
    pub message: String,
}

#[cfg(test)]
pub(crate) fn blank_report() -> Report {
    serde_json::from_value(serde_json::json!({
        "schema_version": SCHEMA_VERSION, "tool": {"name": "plasticity", "version": "0"}, "status": "complete",
        "settings": {}, "device": {"kind": "cpu", "name": "cpu", "threads": 1}, "hours_unit": "device-hours",
        "target_loss": null, "target": null, "checkpoints": [], "ranking": []
    }))
    .expect("a blank report parses")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pretraining {
    /// First logged step within 10% of the total pre-training loss drop from the end.
    pub plateau_onset_step: Option<f64>,
    /// [step, loss] pairs of the longest log_history in the series.
    pub loss_curve: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TargetInfo {
    pub kind: TargetKind,
    pub value: f64,
    /// The checkpoints whose runs set the value: every one with a run that finished the budget
    /// for "median_final" (a race's stopped runs never do), the one with the largest drop for
    /// "drop", none for a given "loss".
    #[serde(default)]
    pub set_by: Vec<String>,
}

/// One seed's run, listed when a checkpoint was fine-tuned with several seeds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeedRun {
    pub seed: u64,
    pub data_seed: u64,
    pub median_step_s: f64,
    pub curve: Vec<CurvePoint>,
    /// Points measured beyond the probe while settling (`--until-settled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settle_curve: Vec<CurvePoint>,
}

/// A seed whose fine-tune failed while others of its checkpoint finished.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedFailure {
    pub seed: u64,
    pub data_seed: u64,
    /// "diverged" (the training loss became NaN or infinite) or "failed".
    pub status: SeedStatus,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    /// The CPU's model name, or each GPU's name and ordinal, comma-separated.
    pub name: String,
    pub threads: usize,
    /// Workers that fine-tuned snapshots side by side (--devices); 1 otherwise.
    #[serde(default = "one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub name: String,
    pub path: String,
    pub step: u64,
    pub step_source: String,
    /// Hash of the checkpoint's files (config, trainer state, sampled weights), for --resume.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// "ok", "failed", "diverged" (the training loss became NaN or infinite), or "stopped"
    /// (a race stopped it early; its metrics are those of its curve so far).
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<StoppedInfo>,
    pub error: Option<String>,
    pub model_type: Option<String>,
    pub params: Option<usize>,
    pub trainable_params: Option<usize>,
    /// The dropouts its config.json sets (transformers' names and defaults), applied while
    /// fine-tuning as transformers' Trainer applies them, never in evaluation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub base_dropout: BTreeMap<String, f64>,
    /// Pre-training loss logged in trainer_state.json, when there is one.
    pub pretrain_loss: Option<f64>,
    /// The loss on --pretrain-sample before fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_sample_loss: Option<f64>,
    /// initial_eval_loss minus the pre-training loss (the sample's, else trainer_state.json's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_gap: Option<f64>,
    /// The snapshot was taken at or after the pre-training plateau onset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_plateau_onset: Option<bool>,
    pub curve: Vec<CurvePoint>,
    pub initial_eval_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub median_step_s: Option<f64>,
    /// Training tokens per update (batch x accumulation x block length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_update: Option<usize>,
    /// Tokens in the task's training blocks under its tokenizer: one epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_tokens: Option<usize>,
    /// Seconds per update its device-hours are priced at: the median step time of every run of
    /// its shape (architecture and size) in the report, so timing noise between identical
    /// models cannot reorder them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_cost_s: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// Achieved FLOP/s: tokens/s x FLOPs per token (4N + attention; see LoadedModel::flops_per_token).
    #[serde(default)]
    pub flops_per_s: Option<f64>,
    /// Peak resident memory of the process while this checkpoint ran (Linux only).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    pub steps_to_target: Option<f64>,
    pub device_hours_to_target: Option<f64>,
    pub convergence_per_device_hour: Option<f64>,
    /// The eval loss this checkpoint had to reach (its own with --target-drop).
    pub target_loss: Option<f64>,
    /// steps_to_target (and what follows from it) comes from a curve fitted to the tail.
    #[serde(default)]
    pub extrapolated: bool,
    /// Area under the eval-loss curve over steps, divided by the steps: the mean eval loss.
    pub mean_eval_loss: Option<f64>,
    /// Steps until the eval loss has fallen by 10% of its total drop.
    pub search_phase_steps: Option<f64>,
    /// (initial - final eval loss) / device-hours of the whole run.
    pub loss_drop_per_device_hour: Option<f64>,
    /// device_hours_to_target x --price-per-gpu-hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_to_target: Option<f64>,
    /// 1 = best; absent for failed checkpoints.
    pub rank: Option<usize>,
    /// Its confidence interval of device-hours to target overlaps the winner's (needs --seeds >= 2).
    #[serde(default)]
    pub tied_with_best: bool,
    /// Its eval loss before fine-tuning is already at or below the target: its zero time to
    /// target measures no adaptation.
    #[serde(default)]
    pub at_target_before_training: bool,
    /// Fine-tunes run (--seeds).
    #[serde(default)]
    pub seeds: usize,
    /// Fine-tunes that finished: the plain metric fields are means over these.
    #[serde(default)]
    pub seeds_ok: usize,
    /// The seeds that failed (the checkpoint is scored on the others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seed_failures: Vec<SeedFailure>,
    /// 95% confidence intervals [low, high] of the metrics, with two seeds or more.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ci95: BTreeMap<String, [f64; 2]>,
    /// Every seed's run, with two seeds or more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<SeedRun>,
    /// At the budget, when the report ranks for one (`budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<ForecastReport>,
    /// The first seed's points measured beyond the probe while settling the ranking at the
    /// budget (`--until-settled`); `curve` stays the probe's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settle_curve: Vec<CurvePoint>,
    /// Single-index checkpoints: mu, initial_loss, escape_step, steps_to_tiny_loss, tau,
    /// predicted_escape_step, m0.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub single_index: Option<crate::single_index::Metrics>,
}

impl CheckpointReport {
    /// It has curves and metrics: it ran the full budget ("ok") or until a race stopped it.
    pub fn measured(&self) -> bool {
        matches!(self.status, Status::Ok | Status::Stopped)
    }
}

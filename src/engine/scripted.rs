//! A scripted engine for unit tests of the runner (race, settling, resume, sweeps, workers,
//! merge): each snapshot's loss curve is a formula of the step and seed, each update takes a
//! prescribed number of seconds, and failures strike where the script says. A run of a
//! thousand updates costs microseconds, and what the runner asked for is recorded so tests
//! can check that a paused run continued instead of starting again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Engine, Job, Paused, Run, Schedule};
use crate::curve::{median, CurvePoint, Outcome, StepEvent};
use crate::discover::CheckpointRef;
use crate::error::{Error, Result};

/// The eval loss of a snapshot at (step, seed, rank, lr).
pub(crate) type LossFn = fn(usize, u64, usize, f64) -> f64;

/// What one snapshot does.
#[derive(Clone, Copy)]
pub(crate) struct Script {
    pub loss: LossFn,
    /// Seconds per update.
    pub step_s: f64,
    /// The run of this seed diverges at this step.
    pub diverge: Option<(u64, usize)>,
    /// The run of this seed hits a bug (panics) at this step.
    pub panic: Option<(u64, usize)>,
    /// Every run of the snapshot fails at once with this message (a broken checkpoint).
    pub broken: Option<&'static str>,
}

impl Script {
    pub fn new(loss: LossFn, step_s: f64) -> Self {
        Script { loss, step_s, diverge: None, panic: None, broken: None }
    }
}

/// One call the runner made: (snapshot, seed, resumed from step, until).
pub(crate) type Call = (String, u64, Option<usize>, usize);

/// The updates the runner asked of a snapshot, summed over seeds and calls.
pub(crate) fn updates_of(calls: &Mutex<Vec<Call>>, name: &str) -> usize {
    let calls = calls.lock().unwrap_or_else(|e| e.into_inner());
    calls.iter().filter(|c| c.0 == name).map(|c| c.3 - c.2.unwrap_or(0)).sum()
}

/// Plays the scripts of a series.
pub(crate) struct Scripted {
    pub scripts: HashMap<String, Script>,
    pub schedule: Schedule,
    pub rank: usize,
    pub lr: f64,
    /// Shared, so a test keeps a handle after the scan takes the engine.
    pub calls: Arc<Mutex<Vec<Call>>>,
}

/// A scripted run, paused.
struct State {
    steps_done: usize,
    curve: Vec<CurvePoint>,
    step_seconds: Vec<f64>,
}

impl Scripted {
    pub fn new(scripts: &[(&str, Script)], schedule: Schedule) -> Self {
        Scripted {
            scripts: scripts.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            schedule,
            rank: 8,
            lr: 1e-3,
            calls: Arc::default(),
        }
    }

    fn script(&self, c: &CheckpointRef) -> Result<Script> {
        self.scripts.get(&c.name).copied().ok_or_else(|| Error::input(&c.path, "no script for this snapshot"))
    }

    /// As the LoRA engine: every `eval_every` updates and at the end of the run (which is
    /// `until` when settling goes beyond the probe).
    fn is_eval(&self, step: usize, until: usize) -> bool {
        step == until.max(self.schedule.steps) || step.is_multiple_of(self.schedule.eval_every.max(1))
    }
}

impl Engine for Scripted {
    fn steps(&self, _c: &CheckpointRef) -> Result<usize> {
        Ok(self.schedule.steps)
    }

    fn schedule(&self, _checkpoints: &[CheckpointRef]) -> Result<Schedule> {
        Ok(self.schedule)
    }

    fn advance(
        &self,
        job: &Job,
        from: Option<Paused>,
        until: usize,
        on_step: &mut dyn FnMut(&StepEvent),
    ) -> Result<(Run, Paused)> {
        let (c, seed) = (job.checkpoint, job.seed);
        let script = self.script(c)?;
        if let Some(why) = script.broken {
            return Err(Error::input(&c.path, why));
        }
        let loss = |step: usize| (script.loss)(step, seed, self.rank, self.lr);
        let mut s = match from {
            Some(p) => p.into_state::<State>()?,
            None => State {
                steps_done: 0,
                curve: vec![CurvePoint { step: 0, train_loss: None, eval_loss: Some(loss(0)), elapsed_s: 0.0 }],
                step_seconds: Vec::new(),
            },
        };
        let resumed = (s.steps_done > 0).then_some(s.steps_done);
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push((c.name.clone(), seed, resumed, until));
        for step in s.steps_done + 1..=until {
            if script.diverge == Some((seed, step)) {
                return Err(Error::Diverged { loss: f64::NAN, step });
            }
            if script.panic == Some((seed, step)) {
                panic!("scripted bug at step {step}");
            }
            s.step_seconds.push(script.step_s);
            let elapsed_s = s.curve.last().map_or(0.0, |p| p.elapsed_s) + script.step_s;
            let eval_loss = self.is_eval(step, until).then(|| loss(step));
            s.curve.push(CurvePoint { step, train_loss: Some(loss(step)), eval_loss, elapsed_s });
            on_step(&StepEvent {
                step,
                steps: until,
                train_loss: loss(step),
                eval_loss,
                step_s: script.step_s,
                tokens: 1,
            });
        }
        s.steps_done = s.steps_done.max(until);
        let run = Run {
            seed,
            data_seed: job.data_seed,
            model_type: "scripted".into(),
            params: 1000,
            trainable_params: 10,
            flops_per_token: 1.0,
            outcome: Outcome {
                curve: s.curve.clone(),
                step_seconds: s.step_seconds.clone(),
                median_step_s: median(&s.step_seconds),
                tokens_per_step: 1024,
            },
            single_index: None,
            base_dropout: Default::default(),
            train_tokens: 1024 * 10,
            settle: Vec::new(),
        };
        let done = s.steps_done;
        Ok((run, Paused::new(s, done, false)))
    }
}

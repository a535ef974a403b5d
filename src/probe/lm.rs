//! `probe` of a language model: the model loaded with every adapter at
//! `AdapterInit::WeightGradient`, its zero-shot loss on the scan's eval blocks, the step-0
//! gradient of each adapted matrix on the task, and the geometry of each frozen weight.

use candle_core::{DType, Device, Tensor};

use super::measures::{fill, matrix_stats, Probe};
use crate::checkpoint::weights::WeightStore;
use crate::data::{self, BatchOrder, Blocks, Document};
use crate::discover::CheckpointRef;
use crate::engine::blocks::Cached;
use crate::error::{CandleContext, Error, Result};
use crate::linalg;
use crate::lora::AdapterInit;
use crate::model::{self, LoadedModel};
use crate::options::ProbeOptions;
use crate::train::{self, Batch};

/// Probes one language-model snapshot; the task and the blocks cache are the scan's.
pub(super) fn probe(
    c: &CheckpointRef,
    o: &ProbeOptions,
    docs: Option<&(std::path::PathBuf, Vec<Document>)>,
    cache: &Cached<Blocks>,
    mut p: Probe,
) -> Result<Probe> {
    let (task, docs) = docs
        .ok_or_else(|| Error::flag("--task", format!("{} is a language model: give --task FILE", c.path.display())))?;
    let model = model::load(&c.path, &o.lora, &AdapterInit::WeightGradient, 0, &o.device)?;
    // the blocks `scan` cuts, so the zero-shot loss is the scan's eval loss at step 0
    let (blocks, tokenizer) = cache
        .get(&c.path, o.tokenizer.as_deref(), &model, docs, |s| data::blocks(s, o.seq_len, o.eval_blocks, task))?;
    crate::engine::blocks::check_fits(&blocks, &model, &tokenizer, o.seq_len)?;
    let blocks = &*blocks;
    let batch = o.batch_size.unwrap_or(crate::options::DEFAULT_BATCH_SIZE);
    p.zero_shot_loss = Some(train::eval_loss(&model, &blocks.eval, batch)?);
    let grads = weight_gradients(&model, blocks, batch, o)?; // (out, in) per adapted module
    let store = WeightStore::open(&c.path, &Device::Cpu)?;
    let mut geometry = Vec::new();
    let mut energy = (0.0, 0.0); // (captured by rank r, total)
    for (adapter, g) in model.adapters.iter().zip(&grads) {
        geometry.push(matrix_stats(&singular_values_of(&weight_of(&store, &adapter.module)?)?));
        let s = singular_values_of(g)?;
        energy.0 += s.iter().take(o.lora.rank).map(|v| v * v).sum::<f64>();
        energy.1 += s.iter().map(|v| v * v).sum::<f64>();
    }
    p.model_type = Some(model.model_type.clone());
    fill(&mut p, &geometry, energy);
    Ok(p)
}

/// dL/dW of every adapted module, (out, in), averaged over `o.batches` training batches: the
/// gradient of B under `AdapterInit::WeightGradient` (A = I, B = 0).
fn weight_gradients(model: &LoadedModel, blocks: &Blocks, batch: usize, o: &ProbeOptions) -> Result<Vec<Tensor>> {
    model.set_training(false);
    let device = model.adapters.first().map(|a| a.a.device().clone()).unwrap_or(Device::Cpu);
    let order = BatchOrder::new(blocks.train.len(), batch, o.batches, o.seed);
    let mut sums: Vec<Option<Tensor>> = vec![None; model.adapters.len()];
    for i in 0..o.batches {
        let refs: Vec<&data::Block> = order.batch(i).iter().map(|&j| &blocks.train[j]).collect();
        let (sum, count) = train::model_loss_sum(model.model.as_ref(), &Batch::from_blocks(&refs, &device)?, true)
            .ctx("probe forward pass")?;
        let grads = (sum / count.max(1.0)).and_then(|l| l.backward()).ctx("probe backward pass")?;
        for (acc, a) in sums.iter_mut().zip(&model.adapters) {
            let g = grads
                .get(a.b.as_tensor())
                .ok_or_else(|| Error::Internal(format!("no gradient reached {}", a.module)))?;
            *acc = Some(match acc.take() {
                None => g.clone(),
                Some(prev) => (prev + g).ctx("probe gradient sum")?,
            });
        }
    }
    sums.into_iter()
        .map(|g| {
            g.ok_or_else(|| Error::internal("no probe batch"))
                .and_then(|g| (g / o.batches as f64).ctx("probe gradient mean"))
        })
        .collect()
}

/// The frozen weight of `module` as stored (GPT-2's Conv1D transposed: same singular values).
/// Module names are transformers' paths; GPT-2 checkpoints converted from OpenAI's store them
/// without the `transformer.` prefix, as the loader accepts.
fn weight_of(store: &WeightStore, module: &str) -> Result<Tensor> {
    let names =
        [format!("{module}.weight"), format!("{}.weight", module.strip_prefix("transformer.").unwrap_or(module))];
    let name = names
        .iter()
        .find(|n| store.contains(n))
        .ok_or_else(|| Error::Internal(format!("tensor {} is missing", names[0])))?;
    let shape = store.shape(name).map(<[usize]>::to_vec).unwrap_or_default();
    store.get(name, &shape)
}

fn singular_values_of(m: &Tensor) -> Result<Vec<f64>> {
    let (rows, cols) = m.dims2().ctx("a 2-D matrix")?;
    let values: Vec<f64> = m.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    linalg::singular_values(&values, rows, cols).map_err(Error::Internal)
}

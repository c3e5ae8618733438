//! `bertcls info`: what a model folder holds and what this build can run it on.

use anyhow::Result;
use clap::Args;

use super::common::{model_files, ModelArgs};
use crate::model::Checkpoint;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let files = model_files(&args.model)?;
    let (dir, config, tokenizer) = (&files.dir, &files.config, &files.tokenizer);
    let id = &files.resolved.id;
    let origin = files.resolved.origin.to_string();
    let ckpt = Checkpoint::open(&dir.dir)?;
    let cuda = crate::backend::cuda::probe();
    let mut weight_files: Vec<String> = ckpt
        .tensor_names()
        .filter_map(|n| ckpt.file_of(n).map(|p| p.display().to_string()))
        .collect();
    weight_files.sort();
    weight_files.dedup();
    let tokenizer_files: Vec<String> = tokenizer
        .sources()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let params = config.num_parameters();
    if args.json {
        let obj = serde_json::json!({
            "model": id,
            "origin": origin,
            "cuda": {
                "kernel_archs": cuda.kernel_archs,
                "nvcc": cuda.nvcc_version,
                "driver": cuda.driver,
                "cublas": cuda.cublas,
                "devices": cuda.devices,
                "problem": cuda.problem,
            },
            "folder": dir.dir.display().to_string(),
            "config_file": dir.config.display().to_string(),
            "config": config,
            "parameters": params,
            "weights_files": weight_files,
            "tokenizer_files": tokenizer_files,
            "max_length": tokenizer.max_length(),
        });
        println!("{obj}");
        return Ok(());
    }
    println!("model       {id} ({origin})");
    println!("folder      {}", dir.dir.display());
    println!("config      {}", dir.config.display());
    println!(
        "            {} layers, hidden {}, {} heads, intermediate {}, vocab {}, max positions {}, type vocab {}",
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        config.vocab_size,
        config.max_position_embeddings,
        config.type_vocab_size
    );
    println!(
        "            hidden_act {}, layer_norm_eps {:e}",
        config.hidden_act, config.layer_norm_eps
    );
    println!("parameters  {params} (encoder, without pooler)");
    for f in &weight_files {
        println!("weights     {f}");
    }
    for f in &tokenizer_files {
        println!("tokenizer   {f}");
    }
    println!("{}", cuda.to_string().trim_end());
    Ok(())
}

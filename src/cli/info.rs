//! `bertcls info`: what a model folder holds and what this build can run it on.

use anyhow::Result;
use clap::Args;

use super::common::{model_files, print_stdout, ModelArgs, ModelFiles};
use crate::model::Checkpoint;

#[derive(Args, Debug)]
#[command(mut_arg("max_length", |a| a.help(
    "A max_length to check against the model's positions; --json reports it"
)))]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Whether `--model` was on the command line (set by `Cli::try_parse_noting_flags`).
    #[arg(skip)]
    pub model_given: bool,
}

/// The build and the machine, shown before the model so that they show even when the
/// default model cannot be found (offline, no `--model`).
fn build_and_device(cuda: &crate::backend::cuda::CudaStatus) -> serde_json::Value {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "cpu": {
            "arch": std::env::consts::ARCH,
            "features": cpu_features(),
            "cores": cores,
            "threads_default": rayon::current_num_threads(),
        },
        "cuda": {
            "kernel_archs": cuda.kernel_archs,
            "nvcc": cuda.nvcc_version,
            "driver": cuda.driver,
            "cublas": cuda.cublas,
            "devices": cuda.devices,
            "problem": cuda.problem,
        },
    })
}

/// The SIMD features the CPU GEMM can use on this machine.
fn cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        if is_x86_feature_detected!("avx2") {
            found.push("avx2");
        }
        if is_x86_feature_detected!("fma") {
            found.push("fma");
        }
        if is_x86_feature_detected!("avx512f") {
            found.push("avx512f");
        }
        found
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec!["neon"]
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec::new()
    }
}

/// What `info` shows of a model: its files, read before anything is printed.
struct ModelInfo {
    files: ModelFiles,
    weight_files: Vec<String>,
    tokenizer_files: Vec<String>,
}

fn model_info(args: &ModelArgs) -> Result<ModelInfo> {
    let files = model_files(args)?;
    let ckpt = Checkpoint::open(&files.dir.dir)?;
    // The layer count info reports is config.json's: the weights must agree, as the
    // encoder's load requires.
    ckpt.check_no_layers_past(files.config.num_hidden_layers)?;
    let mut weight_files: Vec<String> = ckpt
        .tensor_names()
        .filter_map(|n| ckpt.file_of(n).map(|p| p.display().to_string()))
        .collect();
    weight_files.sort();
    weight_files.dedup();
    let tokenizer_files = files
        .tokenizer
        .sources()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Ok(ModelInfo {
        files,
        weight_files,
        tokenizer_files,
    })
}

pub fn run(args: InfoArgs) -> Result<()> {
    let cuda = crate::backend::cuda::probe();
    let build = build_and_device(&cuda);
    // A --model that does not load is the whole answer, as in every other command; the
    // default one not loading (offline, not cached) still leaves the build to show.
    let model = match model_info(&args.model) {
        Err(e) if args.model_given => return Err(e),
        model => model,
    };
    if !args.json {
        let cpu = &build["cpu"];
        print_stdout(format!(
            "bertcls     {}\ncpu         {}, {} cores, {} threads by default, features: {}\n{}\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            cpu["cores"],
            cpu["threads_default"],
            cpu_features().join(" "),
            cuda.to_string().trim_end()
        ))?;
    }
    let ModelInfo {
        files,
        weight_files,
        tokenizer_files,
    } = match model {
        Ok(model) => model,
        Err(e) => {
            if args.json {
                let mut obj = build;
                obj["model_error"] = format!("{e:#}").into();
                print_stdout(format!("{obj}\n"))?;
            }
            return Err(e);
        }
    };
    let (dir, config, tokenizer) = (&files.dir, &files.config, &files.tokenizer);
    let id = &files.resolved.id;
    let origin = files.resolved.origin.to_string();
    let params = config.num_parameters();
    if args.json {
        let mut obj = build;
        let model = serde_json::json!({
            "model": id,
            "origin": origin,
            "folder": dir.dir.display().to_string(),
            "config_file": dir.config.display().to_string(),
            "config": config,
            "parameters": params,
            "weights_files": weight_files,
            "tokenizer_files": tokenizer_files,
            "max_length": tokenizer.max_length(),
        });
        if let (Some(all), serde_json::Value::Object(model)) = (obj.as_object_mut(), model) {
            all.extend(model);
        }
        return print_stdout(format!("{obj}\n"));
    }
    let mut text = format!(
        "model       {id} ({origin})\nfolder      {}\nconfig      {}\n",
        dir.dir.display(),
        dir.config.display()
    );
    text += &format!(
        "            {} layers, hidden {}, {} heads, intermediate {}, vocab {}, max positions {}, type vocab {}\n",
        config.num_hidden_layers,
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        config.vocab_size,
        config.max_position_embeddings,
        config.type_vocab_size
    );
    text += &format!(
        "            hidden_act {}, layer_norm_eps {:e}\nparameters  {params} (encoder, without pooler)\n",
        config.hidden_act, config.layer_norm_eps
    );
    for f in &weight_files {
        text += &format!("weights     {f}\n");
    }
    for f in &tokenizer_files {
        text += &format!("tokenizer   {f}\n");
    }
    print_stdout(text)
}

//! Where a bulk job's time goes, printed under its closing line: whether the encoder
//! bounds the job or the host work around it (reading the data, tokenizing, writing the
//! parts, assembling the output), which decides what a faster job needs (more devices,
//! or faster storage and more cores) before a large job is sized from one shard.

use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
pub enum Stage {
    Reading,
    Tokenizing,
    Encoding,
    Writing,
    Assembling,
}

const NAMES: [&str; 5] = ["reading", "tokenizing", "encoding", "writing", "assembling"];

pub struct StageTimes {
    started: Instant,
    spent: [Duration; 5],
}

impl StageTimes {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            spent: [Duration::ZERO; 5],
        }
    }

    /// Runs `f`, its time counted to `stage`.
    pub fn time<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.spent[stage as usize] += started.elapsed();
        out
    }

    /// "time: encoding 4.2s (79%), ..." over the time since `new`, the largest first.
    pub fn line(&self) -> String {
        line(self.started.elapsed(), &self.spent)
    }
}

fn line(wall: Duration, spent: &[Duration; 5]) -> String {
    let wall = wall.as_secs_f64().max(1e-9);
    let mut order: Vec<usize> = (0..NAMES.len()).collect();
    order.sort_by(|&a, &b| spent[b].cmp(&spent[a]));
    let parts: Vec<String> = order
        .iter()
        .map(|&i| {
            let secs = spent[i].as_secs_f64();
            format!("{} {secs:.2}s ({:.0}%)", NAMES[i], 100.0 * secs / wall)
        })
        .collect();
    format!("time: {} of {wall:.2}s", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_gives_each_stage_its_share_of_the_wall_time_largest_first() {
        let ms = Duration::from_millis;
        let spent = [ms(10), ms(300), ms(4200), ms(700), ms(90)];
        assert_eq!(
            line(ms(5300), &spent),
            "time: encoding 4.20s (79%), writing 0.70s (13%), tokenizing 0.30s (6%), \
             assembling 0.09s (2%), reading 0.01s (0%) of 5.30s"
        );
    }

    #[test]
    fn time_counts_what_it_runs_to_its_stage() {
        let mut times = StageTimes::new();
        let got = times.time(Stage::Writing, || {
            std::thread::sleep(Duration::from_millis(20));
            7
        });
        assert_eq!(got, 7);
        assert!(times.spent[Stage::Writing as usize] >= Duration::from_millis(20));
        let others: Duration = [0, 1, 2, 4].iter().map(|&i| times.spent[i]).sum();
        assert_eq!(others, Duration::ZERO);
    }
}

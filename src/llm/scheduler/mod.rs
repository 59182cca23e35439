//! Continuous batching in front of the model, as TGI's router and vLLM do it.
//!
//! The worker thread keeps several jobs running at once. Each step it asks every
//! running job, oldest first, for its next pieces of work (a prefill chunk, a block of
//! demonstrations, a query's label tree, a generated token) until a token budget is
//! spent, runs them all as one packed forward pass (one pass over the weights for
//! everyone), and hands each job its logits back. A generation decodes a token every
//! step while other jobs prefill beside it, and a job joins or leaves between steps.
//!
//! Every piece keeps the shape it would have run with alone (prefixes in aligned
//! chunks of [`CHUNK`], one label tree per query), and the packed pass computes each
//! sequence's rows as a pass of that sequence alone would, so a job's answer does not
//! depend on what it ran beside.
//!
//! Here: the step loop and what every job shares ([`Task`]). The two kinds of job are
//! [`scoring`] (label scoring, demonstration blocks) and [`generating`].

mod generating;
mod scoring;

pub(super) use generating::Generating;
pub(super) use scoring::Scoring;

use tokio::sync::oneshot;

use super::{run_together, KvBudget, Llm, LlmError, Piece, PrefixCache, Session};
use crate::cores;
use crate::worker::Queue;

/// Tokens one step takes from the running jobs (at least one piece runs, whatever
/// its length).
const STEP_TOKENS: usize = 512;

/// Jobs running at once; later ones wait in the queue, whose bound gives the 429.
const MAX_RUNNING: usize = 8;

/// A piece of work a job hands to a step: a session and the tokens it runs next.
pub(super) struct Work {
    session: Session,
    piece: Piece,
}

/// A session back from a step, with the logits rows its piece asked for.
type Done = (Session, Vec<Vec<f32>>);

/// A job the scheduler runs step by step.
pub(super) trait Task: Send {
    /// Whether whoever waits for the answer has gone, so the work would be wasted.
    fn abandoned(&self) -> bool;

    /// The pieces to run next: as many as fit in `room` tokens, and at least one when
    /// the job has any. Empty when the job can finish without the model.
    ///
    /// # Errors
    /// When the job's input is malformed or a cached state cannot be used.
    fn plan(
        &mut self,
        llm: &Llm,
        cache: &mut PrefixCache,
        room: usize,
    ) -> Result<Vec<Work>, LlmError>;

    /// Takes back the planned pieces' sessions and logits, in order, and answers when
    /// the job is complete; returns whether it is.
    ///
    /// # Errors
    /// When the results cannot be used (the job then fails).
    fn absorb(&mut self, cache: &mut PrefixCache, done: Vec<Done>) -> Result<bool, LlmError>;

    /// Answers `error` to whoever waits.
    fn fail(self: Box<Self>, error: LlmError);

    /// Bytes of keys and values the job holds between steps.
    fn kv_bytes(&self) -> usize;

    /// The most tokens of keys and values the job holds at once: reserved from the
    /// budget when it is admitted.
    fn kv_tokens(&self) -> usize;
}

/// Runs the jobs from `queue` until every handle on it is gone.
pub(super) fn run(llm: &Llm, mut cache: PrefixCache, queue: Queue<Box<dyn Task>>) {
    let mut running: Vec<Box<dyn Task>> = Vec::new();
    // The next job in line, taken from the queue but waiting for room in the KV budget;
    // nothing overtakes it.
    let mut next: Option<Box<dyn Task>> = None;
    loop {
        if running.is_empty() && next.is_none() {
            match queue.recv() {
                Some(task) => next = Some(task),
                None => return,
            }
        }
        while running.len() < MAX_RUNNING {
            let Some(task) = next.take().or_else(|| queue.try_recv()) else {
                break;
            };
            if task.abandoned() {
                continue;
            }
            if !admits(llm, &cache, &running, task.as_ref()) {
                next = Some(task);
                break;
            }
            running.push(task);
        }
        ::metrics::gauge!("exemplar_llm_running_jobs").set(running.len() as f64);
        let step = std::panic::AssertUnwindSafe(|| step(llm, &mut cache, &mut running));
        if std::panic::catch_unwind(step).is_err() {
            // Nothing the step touched can be trusted: the running jobs' callers get an
            // error, and the model takes no more work.
            queue.break_down();
            return;
        }
    }
}

/// Whether `task` may start beside `running`: what it may hold at most, reserved
/// beside what they reserve, within the KV budget (the caches give way). A job that
/// needs more than the whole budget runs alone.
fn admits(llm: &Llm, cache: &PrefixCache, running: &[Box<dyn Task>], task: &dyn Task) -> bool {
    let per_token = llm.model.kv_bytes_per_token();
    let needed = task.kv_tokens().saturating_mul(per_token);
    running.is_empty() || cache.budget().admits(reserved(running, per_token), needed)
}

/// Bytes the running jobs reserve: what each may hold at most, or holds if more.
fn reserved(running: &[Box<dyn Task>], per_token: usize) -> usize {
    running
        .iter()
        .map(|task| {
            task.kv_tokens()
                .saturating_mul(per_token)
                .max(task.kv_bytes())
        })
        .fold(0, usize::saturating_add)
}

/// Runs one job to its end with nothing beside it.
pub(super) fn run_alone(llm: &Llm, cache: &mut PrefixCache, task: Box<dyn Task>) {
    let mut running = vec![task];
    while !running.is_empty() {
        step(llm, cache, &mut running);
    }
}

/// One step: plans every running job's pieces within the budget, runs them in one
/// packed pass and hands back the results; finished and failed jobs leave `running`.
fn step(llm: &Llm, cache: &mut PrefixCache, running: &mut Vec<Box<dyn Task>>) {
    running.retain(|task| !task.abandoned());
    let _turn = cores::take(llm.model.device());
    let mut room = STEP_TOKENS;
    let mut planned: Vec<(usize, usize)> = Vec::new();
    let mut work: Vec<Work> = Vec::new();
    let mut failed: Vec<(usize, LlmError)> = Vec::new();
    for (index, task) in running.iter_mut().enumerate() {
        if room == 0 {
            break;
        }
        let pieces = task.plan(llm, cache, room).and_then(|pieces| {
            // A job's malformed piece fails that job alone, not the whole pass.
            for w in &pieces {
                llm.model
                    .check(&w.piece.ids, &w.piece.positions, &w.piece.outputs)?;
            }
            Ok(pieces)
        });
        match pieces {
            Ok(pieces) => {
                let tokens: usize = pieces.iter().map(|w| w.piece.len()).sum();
                room = room.saturating_sub(tokens);
                planned.push((index, pieces.len()));
                work.extend(pieces);
            }
            Err(error) => failed.push((index, error)),
        }
    }
    let step_tokens: usize = work.iter().map(|w| w.piece.len()).sum();
    ::metrics::histogram!("exemplar_llm_step_tokens").record(step_tokens as f64);

    // The running jobs' reservations (and the step's new keys and values, which they
    // cover) come out of the budget before they exist, so the model's KV memory stays
    // within it during the pass too, not only between passes.
    let per_token = llm.model.kv_bytes_per_token();
    cache.make_room(
        KvBudget::running_bytes(
            running.iter().map(|task| task.kv_bytes()),
            step_tokens,
            per_token,
        )
        .max(reserved(running, per_token)),
    );

    let results = run_work(&mut work);
    let mut finished: Vec<usize> = Vec::new();
    match results {
        Ok(rows) => {
            let mut done = work.into_iter().map(|w| w.session).zip(rows);
            for (index, count) in planned {
                let mine: Vec<Done> = done.by_ref().take(count).collect();
                match running[index].absorb(cache, mine) {
                    Ok(true) => finished.push(index),
                    Ok(false) => {}
                    Err(error) => failed.push((index, error)),
                }
            }
        }
        Err(error) => {
            // Every piece was checked, so this is the model's own failure: it fails
            // everyone in the pass.
            let message = error.to_string();
            failed.extend(
                planned
                    .into_iter()
                    .map(|(index, _)| (index, LlmError::InvalidInput(message.clone()))),
            );
        }
    }
    let mut leaving: Vec<(usize, Option<LlmError>)> =
        finished.into_iter().map(|i| (i, None)).collect();
    leaving.extend(failed.into_iter().map(|(i, e)| (i, Some(e))));
    leaving.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    for (index, error) in leaving {
        let task = running.remove(index);
        if let Some(error) = error {
            task.fail(error);
        }
    }
    cache.make_room(reserved(running, llm.model.kv_bytes_per_token()));
}

/// Runs every piece in one packed pass.
fn run_work(work: &mut [Work]) -> Result<Vec<Vec<Vec<f32>>>, LlmError> {
    let mut batch: Vec<(&mut Session, &Piece)> = work
        .iter_mut()
        .map(|w| (&mut w.session, &w.piece))
        .collect();
    run_together(&mut batch)
}

/// Sends `result` to whoever waits on `reply`, the first time only; a caller that has
/// gone is not an error.
fn reply_once<T>(reply: &mut Option<oneshot::Sender<T>>, result: T) {
    if let Some(reply) = reply.take() {
        let _ = reply.send(result);
    }
}

/// Whether nobody waits on `reply` any more (or it has been answered).
fn gone<T>(reply: &Option<oneshot::Sender<T>>) -> bool {
    reply.as_ref().is_none_or(oneshot::Sender::is_closed)
}

/// A step returned fewer results than it was given pieces: a bug, reported as an error.
fn lost() -> LlmError {
    LlmError::InvalidInput("a step lost a piece of work".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::config::WeightFormat;
    use crate::llm::{Generation, GenerationParams, ScoreRequest};

    type GenerationReply = oneshot::Receiver<Result<Generation, LlmError>>;
    type ScoresReply = oneshot::Receiver<Result<Vec<Vec<f32>>, LlmError>>;
    /// Each generation's text and token count; each scoring's scores.
    type Answers = (Vec<(String, usize)>, Vec<Vec<Vec<f32>>>);

    /// Two generations (one prompt longer than a chunk, one sampled) and two scorings
    /// (one with demonstration blocks), with where their answers will arrive.
    fn jobs(llm: &Llm) -> (Vec<Box<dyn Task>>, Vec<GenerationReply>, Vec<ScoresReply>) {
        let encode = |s: &str| llm.tokenizer.encode(s).expect("encodes");
        let mut tasks: Vec<Box<dyn Task>> = Vec::new();
        let mut generations = Vec::new();
        let long = "A short story about a lighthouse keeper and the sea. ".repeat(8);
        for (prompt, temperature) in [("The capital of France is", 0.0), (long.as_str(), 0.8)] {
            let (reply, answer) = oneshot::channel();
            let params = GenerationParams {
                max_tokens: 6,
                temperature,
                top_p: 1.0,
                seed: 7,
                stop: Vec::new(),
                logprobs: Some(2),
            };
            tasks.push(Box::new(Generating::new(
                llm,
                encode(prompt),
                params,
                None,
                reply,
            )));
            generations.push(answer);
        }
        let head = encode("Classify the sentiment of each review.");
        let demonstrations = [
            encode("\n\nReview: a gorgeous, witty film.\nSentiment: positive"),
            encode("\n\nReview: dull and far too long.\nSentiment: negative"),
        ];
        let queries = vec![
            encode("\n\nReview: a lovely surprise.\nSentiment:"),
            encode("\n\nReview: I want those two hours back.\nSentiment:"),
        ];
        let continuations = vec![encode(" positive"), encode(" negative")];
        let mut scores = Vec::new();
        for blocks in [Vec::new(), demonstrations.iter().map(Vec::len).collect()] {
            let (reply, answer) = oneshot::channel();
            let request = ScoreRequest {
                prefix: [head.clone(), demonstrations.concat()].concat(),
                queries: queries.clone(),
                continuations: continuations.clone(),
                blocks,
            };
            tasks.push(Box::new(Scoring::new(request, reply)));
            scores.push(answer);
        }
        (tasks, generations, scores)
    }

    /// Runs `tasks` side by side to their ends; the steps it took.
    fn drive(llm: &Llm, mut running: Vec<Box<dyn Task>>) -> usize {
        let mut cache = PrefixCache::default();
        let mut steps = 0;
        while !running.is_empty() {
            step(llm, &mut cache, &mut running);
            steps += 1;
        }
        steps
    }

    fn answers(generations: Vec<GenerationReply>, scores: Vec<ScoresReply>) -> Answers {
        let generations = generations
            .into_iter()
            .map(|mut g| {
                let g = g.try_recv().expect("answered").expect("generates");
                (g.text, g.completion_tokens)
            })
            .collect();
        let scores = scores
            .into_iter()
            .map(|mut s| s.try_recv().expect("answered").expect("scores"))
            .collect();
        (generations, scores)
    }

    #[test]
    fn jobs_run_side_by_side_answer_exactly_as_they_do_alone_in_fewer_steps() {
        let llm = crate::llm::tests::llm(WeightFormat::Q8_0);
        let (tasks, generations, scores) = jobs(&llm);
        let together = drive(&llm, tasks);
        let (shared_generations, shared_scores) = answers(generations, scores);

        let (tasks, generations, scores) = jobs(&llm);
        let alone: usize = tasks.into_iter().map(|t| drive(&llm, vec![t])).sum();
        let (own_generations, own_scores) = answers(generations, scores);

        assert_eq!(shared_generations, own_generations);
        assert_eq!(shared_scores, own_scores);
        assert!(
            shared_generations.iter().all(|(_, tokens)| *tokens == 6),
            "{shared_generations:?}"
        );
        assert!(
            together < alone,
            "{together} steps side by side against {alone} one after another"
        );
    }

    /// A job that notes the keys and values held when its step's results come back:
    /// the cache's and its own sessions', new tokens included.
    struct Watched {
        inner: Box<dyn Task>,
        most_held: Arc<AtomicUsize>,
    }

    impl Task for Watched {
        fn abandoned(&self) -> bool {
            self.inner.abandoned()
        }

        fn plan(
            &mut self,
            llm: &Llm,
            cache: &mut PrefixCache,
            room: usize,
        ) -> Result<Vec<Work>, LlmError> {
            self.inner.plan(llm, cache, room)
        }

        fn absorb(&mut self, cache: &mut PrefixCache, done: Vec<Done>) -> Result<bool, LlmError> {
            let held = cache.bytes() + done.iter().map(|(s, _)| s.kv_bytes()).sum::<usize>();
            self.most_held.fetch_max(held, Ordering::Relaxed);
            self.inner.absorb(cache, done)
        }

        fn fail(self: Box<Self>, error: LlmError) {
            self.inner.fail(error);
        }

        fn kv_bytes(&self) -> usize {
            self.inner.kv_bytes()
        }

        fn kv_tokens(&self) -> usize {
            self.inner.kv_tokens()
        }
    }

    /// A job that only says how many tokens of keys and values it may hold.
    struct Reserving(usize);

    impl Task for Reserving {
        fn abandoned(&self) -> bool {
            false
        }

        fn plan(&mut self, _: &Llm, _: &mut PrefixCache, _: usize) -> Result<Vec<Work>, LlmError> {
            Ok(Vec::new())
        }

        fn absorb(&mut self, _: &mut PrefixCache, _: Vec<Done>) -> Result<bool, LlmError> {
            Ok(true)
        }

        fn fail(self: Box<Self>, _: LlmError) {}

        fn kv_bytes(&self) -> usize {
            0
        }

        fn kv_tokens(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn a_job_starts_when_its_keys_and_values_fit_beside_the_running_jobs() {
        let llm = crate::llm::tests::llm(WeightFormat::Q8_0);
        let per_token = llm.model.kv_bytes_per_token();
        let mut cache = PrefixCache::with_budget(per_token * 100);
        // What the caches hold gives way: it does not keep a job out.
        let earlier = llm
            .tokenizer
            .encode("An earlier prompt, kept.")
            .expect("encodes");
        cache.session(&llm, &earlier).expect("runs");
        assert!(cache.bytes() > 0);
        let running: Vec<Box<dyn Task>> = vec![Box::new(Reserving(60))];
        assert!(admits(&llm, &cache, &running, &Reserving(40)));
        assert!(!admits(&llm, &cache, &running, &Reserving(41)));
        // One that needs more than the whole budget runs alone, never beside another.
        assert!(admits(&llm, &cache, &[], &Reserving(500)));
        let small: Vec<Box<dyn Task>> = vec![Box::new(Reserving(1))];
        assert!(!admits(&llm, &cache, &small, &Reserving(500)));
    }

    #[test]
    fn a_step_makes_room_for_the_keys_and_values_it_adds_before_it_runs() {
        let llm = crate::llm::tests::llm(WeightFormat::Q8_0);
        let encode = |s: &str| llm.tokenizer.encode(s).expect("encodes");
        let old = encode("An earlier prompt, which the cache keeps until it needs the room.");
        let prompt = encode("The capital of France is");
        let per_token = llm.model.kv_bytes_per_token();
        // Room for either prompt's keys and values and one generated token, not both.
        let budget = per_token * (old.len().max(prompt.len()) + 1);
        let mut cache = PrefixCache::with_budget(budget);
        cache.session(&llm, &old).expect("runs the earlier prompt");
        assert_eq!(cache.bytes(), per_token * old.len());

        // The caller waits until the end, so the job is not abandoned.
        let (reply, _answer) = oneshot::channel();
        let params = GenerationParams {
            max_tokens: 2,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            logprobs: None,
        };
        let most_held = Arc::new(AtomicUsize::new(0));
        let mut running: Vec<Box<dyn Task>> = vec![Box::new(Watched {
            inner: Box::new(Generating::new(&llm, prompt, params, None, reply)),
            most_held: Arc::clone(&most_held),
        })];
        while !running.is_empty() {
            step(&llm, &mut cache, &mut running);
        }
        let most_held = most_held.load(Ordering::Relaxed);
        assert!(most_held > 0);
        assert!(
            most_held <= budget,
            "{most_held} bytes of keys and values held during a step, budget {budget}"
        );
    }

    #[test]
    fn a_job_whose_caller_has_gone_leaves_without_running() {
        let llm = crate::llm::tests::llm(WeightFormat::Q8_0);
        let (tasks, generations, scores) = jobs(&llm);
        drop(generations);
        drop(scores);
        let mut running = tasks;
        step(&llm, &mut PrefixCache::default(), &mut running);
        assert!(running.is_empty());
    }
}

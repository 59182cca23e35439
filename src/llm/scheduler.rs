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

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::generate::Decoder;
use super::model::KvCache;
use super::prefix_cache::CHUNK;
use super::score::{check, Tree};
use super::{
    run_together, Delta, Generation, GenerationParams, Llm, LlmError, Piece, PrefixCache,
    ScoreRequest, Session,
};
use crate::cores;
use crate::worker::{record_panic, Queue};

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
}

/// Runs the jobs from `queue` until every handle on it is gone.
pub(super) fn run(llm: &Llm, mut cache: PrefixCache, queue: Queue<Box<dyn Task>>) {
    let mut running: Vec<Box<dyn Task>> = Vec::new();
    loop {
        if running.is_empty() {
            match queue.recv() {
                Some(task) => running.push(task),
                None => return,
            }
        }
        while running.len() < MAX_RUNNING {
            match queue.try_recv() {
                Some(task) => running.push(task),
                None => break,
            }
        }
        ::metrics::gauge!("exemplar_llm_running_jobs").set(running.len() as f64);
        let step = std::panic::AssertUnwindSafe(|| step(llm, &mut cache, &mut running));
        if std::panic::catch_unwind(step).is_err() {
            // The jobs of the failed step cannot be trusted; their callers get an error.
            record_panic("exemplar-llm");
            running.clear();
        }
    }
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

    // The step's new keys and values come out of the budget before they exist, so the
    // model's KV memory stays within it during the pass too, not only between passes.
    cache.make_room(kv_bytes(running) + step_tokens * llm.model.kv_bytes_per_token());

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
    cache.make_room(kv_bytes(running));
}

/// Bytes of keys and values the running jobs hold between steps.
fn kv_bytes(running: &[Box<dyn Task>]) -> usize {
    running.iter().map(|task| task.kv_bytes()).sum()
}

/// Runs every piece in one packed pass.
fn run_work(work: &mut [Work]) -> Result<Vec<Vec<Vec<f32>>>, LlmError> {
    let mut batch: Vec<(&mut Session, &Piece)> = work
        .iter_mut()
        .map(|w| (&mut w.session, &w.piece))
        .collect();
    run_together(&mut batch)
}

/// A [`ScoreRequest`] under way.
pub(super) struct Scoring {
    request: ScoreRequest,
    reply: Option<oneshot::Sender<Result<Vec<Vec<f32>>, LlmError>>>,
    phase: ScoringPhase,
}

/// Where a scoring job is.
enum ScoringPhase {
    /// Not looked up yet.
    Start,
    /// Running the head (the prefix, or what comes before its demonstration blocks):
    /// `fed` of its tokens are in `session`.
    Head { session: Session, fed: usize },
    /// The head is run; the blocks held so far, and whether each is being computed.
    Blocks {
        head: Session,
        key: u64,
        held: Vec<Option<KvCache>>,
        running: Vec<usize>,
    },
    /// The prefix is in `base`; each query's tree and score so far.
    Queries {
        base: Session,
        trees: Vec<Tree>,
        scores: Vec<Option<Vec<f32>>>,
        running: Vec<usize>,
    },
    /// Answered.
    Done,
}

impl Scoring {
    /// A job that answers `request` on `reply`.
    pub(super) fn new(
        request: ScoreRequest,
        reply: oneshot::Sender<Result<Vec<Vec<f32>>, LlmError>>,
    ) -> Self {
        Self {
            request,
            reply: Some(reply),
            phase: ScoringPhase::Start,
        }
    }

    /// Tokens before the demonstration blocks.
    fn head_len(&self) -> Result<usize, LlmError> {
        Ok(split_prefix(&self.request)?.0.len())
    }

    /// Moves on from a finished head: to the blocks, or straight to the queries.
    fn after_head(&mut self, head: Session, cache: &mut PrefixCache) -> Result<(), LlmError> {
        if self.request.blocks.is_empty() {
            self.phase = self.queries(head);
            return Ok(());
        }
        let (head_tokens, blocks) = split_prefix(&self.request)?;
        let key = cache.start_blocks(head_tokens, &blocks)?;
        let held = blocks
            .iter()
            .map(|b| cache.demonstrations.get(key, b))
            .collect();
        self.phase = ScoringPhase::Blocks {
            head,
            key,
            held,
            running: Vec::new(),
        };
        Ok(())
    }

    fn queries(&self, base: Session) -> ScoringPhase {
        let trees = self
            .request
            .queries
            .iter()
            .map(|q| {
                Tree::pack(
                    std::slice::from_ref(q),
                    &self.request.continuations,
                    base.position,
                )
            })
            .collect();
        ScoringPhase::Queries {
            base,
            trees,
            scores: vec![None; self.request.queries.len()],
            running: Vec::new(),
        }
    }

    fn answer(&mut self, result: Result<Vec<Vec<f32>>, LlmError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
        self.phase = ScoringPhase::Done;
    }
}

impl Task for Scoring {
    fn abandoned(&self) -> bool {
        gone(&self.reply)
    }

    fn plan(
        &mut self,
        llm: &Llm,
        cache: &mut PrefixCache,
        room: usize,
    ) -> Result<Vec<Work>, LlmError> {
        if matches!(self.phase, ScoringPhase::Start) {
            check(&self.request)?;
            if self.request.queries.is_empty() {
                return Ok(Vec::new());
            }
            let head_len = self.head_len()?;
            let (session, fed) = cache.lookup(llm, &self.request.prefix[..head_len])?;
            if fed == head_len {
                self.after_head(session, cache)?;
            } else {
                self.phase = ScoringPhase::Head { session, fed };
            }
        }
        match &mut self.phase {
            ScoringPhase::Start | ScoringPhase::Done => Ok(Vec::new()),
            ScoringPhase::Head { session, fed } => {
                let (head, _) = split_prefix(&self.request)?;
                let piece = Piece::causal(session, &head[*fed..(*fed + CHUNK).min(head.len())]);
                Ok(vec![Work {
                    session: session.clone(),
                    piece,
                }])
            }
            ScoringPhase::Blocks {
                head,
                held,
                running,
                ..
            } => {
                let (_, blocks) = split_prefix(&self.request)?;
                let mut work = Vec::new();
                let mut tokens = 0;
                for (index, block) in blocks.iter().enumerate() {
                    if held[index].is_some() {
                        continue;
                    }
                    if !work.is_empty() && tokens + block.len() > room {
                        break;
                    }
                    tokens += block.len();
                    running.push(index);
                    work.push(Work {
                        piece: Piece::causal(head, block),
                        session: head.clone(),
                    });
                }
                Ok(work)
            }
            ScoringPhase::Queries {
                base,
                trees,
                scores,
                running,
            } => {
                let mut work = Vec::new();
                let mut tokens = 0;
                for (index, tree) in trees.iter().enumerate() {
                    if scores[index].is_some() {
                        continue;
                    }
                    let piece = tree.piece(base.position);
                    if !work.is_empty() && tokens + piece.len() > room {
                        break;
                    }
                    tokens += piece.len();
                    running.push(index);
                    work.push(Work {
                        session: base.clone(),
                        piece,
                    });
                }
                Ok(work)
            }
        }
    }

    fn absorb(&mut self, cache: &mut PrefixCache, done: Vec<Done>) -> Result<bool, LlmError> {
        let phase = std::mem::replace(&mut self.phase, ScoringPhase::Done);
        match phase {
            ScoringPhase::Start | ScoringPhase::Done => {
                // Nothing to run: no queries.
                self.answer(Ok(Vec::new()));
                return Ok(true);
            }
            ScoringPhase::Head { .. } => {
                let (session, _) = done.into_iter().next().ok_or_else(lost)?;
                let fed = session.position;
                let head_len = self.head_len()?;
                if fed < head_len {
                    self.phase = ScoringPhase::Head { session, fed };
                } else {
                    cache.remember(&self.request.prefix[..head_len], &session);
                    self.after_head(session, cache)?;
                }
            }
            ScoringPhase::Blocks {
                head,
                key,
                mut held,
                running,
            } => {
                let (_, blocks) = split_prefix(&self.request)?;
                for (index, (session, _)) in running.into_iter().zip(done) {
                    let kv = session.kv_slice(head.position, blocks[index].len())?;
                    cache.demonstrations.insert(key, blocks[index], kv.clone());
                    held[index] = Some(kv);
                }
                if held.iter().all(Option::is_some) {
                    let held: Vec<KvCache> = held.into_iter().flatten().collect();
                    let base = cache.demonstrations.assemble(&head, &blocks, &held)?;
                    cache.trim();
                    self.phase = self.queries(base);
                } else {
                    self.phase = ScoringPhase::Blocks {
                        head,
                        key,
                        held,
                        running: Vec::new(),
                    };
                }
            }
            ScoringPhase::Queries {
                base,
                trees,
                mut scores,
                running,
            } => {
                for (index, (_, logits)) in running.into_iter().zip(done) {
                    scores[index] = Some(trees[index].sums(&logits).remove(0));
                }
                if scores.iter().all(Option::is_some) {
                    self.answer(Ok(scores.into_iter().flatten().collect()));
                    return Ok(true);
                }
                self.phase = ScoringPhase::Queries {
                    base,
                    trees,
                    scores,
                    running: Vec::new(),
                };
            }
        }
        Ok(false)
    }

    fn fail(mut self: Box<Self>, error: LlmError) {
        self.answer(Err(error));
    }

    fn kv_bytes(&self) -> usize {
        match &self.phase {
            ScoringPhase::Head { session, .. } => session.kv_bytes(),
            ScoringPhase::Blocks { head, held, .. } => {
                head.kv_bytes() + held.iter().flatten().map(KvCache::bytes).sum::<usize>()
            }
            ScoringPhase::Queries { base, .. } => base.kv_bytes(),
            ScoringPhase::Start | ScoringPhase::Done => 0,
        }
    }
}

/// A generation under way.
pub(super) struct Generating {
    prompt: Vec<u32>,
    decoder: Option<Decoder>,
    deltas: Option<mpsc::UnboundedSender<Delta>>,
    reply: Option<oneshot::Sender<Result<Generation, LlmError>>>,
    phase: GeneratingPhase,
}

/// Where a generation is.
enum GeneratingPhase {
    /// Not looked up yet.
    Start,
    /// Running the prompt: `session` has seen its first `fed` tokens.
    Prompt { session: Session, fed: usize },
    /// Decoding: `next` is the token to run after what `session` has seen.
    Decoding { session: Session, next: u32 },
    /// Answered.
    Done,
}

impl Generating {
    /// A job that continues `prompt` and answers on `reply`, sending settled text to
    /// `deltas` when given.
    pub(super) fn new(
        llm: &Llm,
        prompt: Vec<u32>,
        params: GenerationParams,
        deltas: Option<mpsc::UnboundedSender<Delta>>,
        reply: oneshot::Sender<Result<Generation, LlmError>>,
    ) -> Self {
        let decoder = Decoder::new(
            Arc::clone(&llm.tokenizer),
            params,
            prompt.len(),
            llm.context_length(),
        );
        Self {
            prompt,
            decoder: Some(decoder),
            deltas,
            reply: Some(reply),
            phase: GeneratingPhase::Start,
        }
    }

    /// Sends settled text on; false when the caller has gone.
    fn send(
        deltas: &Option<mpsc::UnboundedSender<Delta>>,
        reply: &Option<oneshot::Sender<Result<Generation, LlmError>>>,
        delta: Delta,
    ) -> bool {
        match deltas {
            Some(tx) => tx.send(delta).is_ok(),
            None => reply.as_ref().is_some_and(|r| !r.is_closed()),
        }
    }

    fn answer(&mut self, result: Result<Generation, LlmError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
        self.phase = GeneratingPhase::Done;
    }

    /// Ends the generation and answers with it.
    fn finish(&mut self) {
        if let Some(decoder) = self.decoder.take() {
            let (deltas, reply) = (&self.deltas, &self.reply);
            let generation = decoder.finish(&mut |d| Self::send(deltas, reply, d));
            self.answer(Ok(generation));
        }
    }
}

impl Task for Generating {
    fn abandoned(&self) -> bool {
        gone(&self.reply)
    }

    fn plan(
        &mut self,
        llm: &Llm,
        cache: &mut PrefixCache,
        _room: usize,
    ) -> Result<Vec<Work>, LlmError> {
        if matches!(self.phase, GeneratingPhase::Start) {
            let Some((_, start)) = self.prompt.split_last() else {
                return Err(LlmError::InvalidInput(
                    "cannot continue an empty prompt".into(),
                ));
            };
            let (session, fed) = cache.lookup(llm, start)?;
            self.phase = GeneratingPhase::Prompt { session, fed };
        }
        let (session, ids) = match &self.phase {
            GeneratingPhase::Start | GeneratingPhase::Done => return Ok(Vec::new()),
            GeneratingPhase::Prompt { session, fed } => {
                // The prompt but its last token runs in aligned chunks (so it can be
                // reused); the last token runs alone and gives the first logits.
                let start = self.prompt.len() - 1;
                let end = if *fed < start {
                    (*fed + CHUNK).min(start)
                } else {
                    self.prompt.len()
                };
                (session, &self.prompt[*fed..end])
            }
            GeneratingPhase::Decoding { session, next } => (session, std::slice::from_ref(next)),
        };
        Ok(vec![Work {
            piece: Piece::causal(session, ids),
            session: session.clone(),
        }])
    }

    fn absorb(&mut self, cache: &mut PrefixCache, done: Vec<Done>) -> Result<bool, LlmError> {
        let (session, mut logits) = done.into_iter().next().ok_or_else(lost)?;
        let start = self.prompt.len() - 1;
        if session.position < start {
            self.phase = GeneratingPhase::Prompt {
                fed: session.position,
                session,
            };
            return Ok(false);
        }
        if session.position == start {
            cache.remember(&self.prompt[..start], &session);
            self.phase = GeneratingPhase::Prompt {
                fed: start,
                session,
            };
            return Ok(false);
        }
        let logits = logits.pop().ok_or_else(lost)?;
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(true);
        };
        let (deltas, reply) = (&self.deltas, &self.reply);
        match decoder.accept(&logits, &mut |d| Self::send(deltas, reply, d))? {
            Some(next) => {
                self.phase = GeneratingPhase::Decoding { session, next };
                Ok(false)
            }
            None => {
                self.finish();
                Ok(true)
            }
        }
    }

    fn fail(mut self: Box<Self>, error: LlmError) {
        self.answer(Err(error));
    }

    fn kv_bytes(&self) -> usize {
        match &self.phase {
            GeneratingPhase::Prompt { session, .. } | GeneratingPhase::Decoding { session, .. } => {
                session.kv_bytes()
            }
            GeneratingPhase::Start | GeneratingPhase::Done => 0,
        }
    }
}

/// Whether nobody waits on `reply` any more (or it has been answered).
fn gone<T>(reply: &Option<oneshot::Sender<T>>) -> bool {
    reply.as_ref().is_none_or(oneshot::Sender::is_closed)
}

/// The prefix's head and its demonstration blocks.
fn split_prefix(request: &ScoreRequest) -> Result<(&[u32], Vec<&[u32]>), LlmError> {
    let head_len = request
        .prefix
        .len()
        .checked_sub(request.blocks.iter().sum())
        .ok_or_else(|| {
            LlmError::InvalidInput("demonstration blocks longer than the prefix".into())
        })?;
    let (head, mut rest) = request.prefix.split_at(head_len);
    let blocks = request
        .blocks
        .iter()
        .map(|&len| {
            let (block, after) = rest.split_at(len);
            rest = after;
            block
        })
        .collect();
    Ok((head, blocks))
}

/// A step returned fewer results than it was given pieces: a bug, reported as an error.
fn lost() -> LlmError {
    LlmError::InvalidInput("a step lost a piece of work".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::WeightFormat;

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

//! Scoring jobs: a prompt's head run in chunks (or found in the prefix cache), its
//! demonstration blocks computed or taken from the demonstration cache, then each
//! query's label tree scored in one piece.

use tokio::sync::oneshot;

use super::{gone, lost, reply_once, Done, Task, Work, STEP_TOKENS};
use crate::llm::demonstration_cache::Head;
use crate::llm::model::KvCache;
use crate::llm::prefix_cache::CHUNK;
use crate::llm::score::{check, Tree};
use crate::llm::{Llm, LlmError, Piece, PrefixCache, ScoreRequest, Session};

/// A [`ScoreRequest`] under way.
pub(in crate::llm) struct Scoring {
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
        key: Head,
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
    pub(in crate::llm) fn new(
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
            .map(|b| cache.demonstrations.get(&key, b))
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
        reply_once(&mut self.reply, result);
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
                    cache.demonstrations.insert(&key, blocks[index], kv.clone());
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

    fn kv_tokens(&self) -> usize {
        // The prefix (head and blocks), then the label trees of one step at a time.
        let continuations: usize = self.request.continuations.iter().map(Vec::len).sum();
        let trees = self.request.queries.iter().map(|q| q.len() + continuations);
        let (largest, all) = trees.fold((0, 0), |(largest, all), tree| {
            (usize::max(largest, tree), all + tree)
        });
        self.request.prefix.len() + all.min(largest.max(STEP_TOKENS))
    }
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

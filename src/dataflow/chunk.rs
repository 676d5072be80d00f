//! Chunking and hashing. A document's text is cut into paragraph blocks first (blank-line
//! separated, fenced code kept whole, a heading glued to the block after it), and only
//! blocks longer than `max_chars` are split further by text-splitter's markdown-aware
//! splitter. Small paragraphs are not packed together, so an edit to one paragraph changes
//! only that paragraph's chunks: the chunks after it keep their text and content hash
//! (their index shifts only if the number of chunks before them changes).

use text_splitter::{ChunkConfig, MarkdownSplitter};

use crate::config::ChunkerSpec;
use crate::model::ContentHash;

/// A configured chunker.
pub struct Chunker {
    max_chars: usize,
    splitter: MarkdownSplitter<text_splitter::Characters>,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("max_chars", &self.max_chars).finish()
    }
}

impl Chunker {
    /// A chunker with the given limits (validated by the config: overlap < max).
    pub fn new(spec: &ChunkerSpec) -> Self {
        let config = ChunkConfig::new(spec.max_chars)
            .with_overlap(spec.overlap_chars)
            .unwrap_or_else(|_| ChunkConfig::new(spec.max_chars));
        Self { max_chars: spec.max_chars, splitter: MarkdownSplitter::new(config) }
    }

    /// Cut `text` into chunks (no empty chunks; whitespace-only text gives none).
    pub fn chunks(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for block in blocks(text) {
            if block.chars().count() <= self.max_chars {
                out.push(block);
            } else {
                out.extend(self.splitter.chunks(&block).map(str::trim).filter(|c| !c.is_empty()).map(String::from));
            }
        }
        out
    }

    /// Chunks with their content hashes.
    pub fn chunk_and_hash(&self, text: &str) -> Vec<(ContentHash, String)> {
        self.chunks(text).into_iter().map(|c| (ContentHash::of(&c), c)).collect()
    }
}

/// Paragraph blocks: split on blank lines outside fenced code; a lone heading line is glued
/// to the following block. Lines are right-trimmed; blocks are trimmed.
fn blocks(text: &str) -> Vec<String> {
    let mut raw: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        }
        if !in_fence && line.trim().is_empty() {
            if !cur.trim().is_empty() {
                raw.push(std::mem::take(&mut cur).trim().to_string());
            }
            cur.clear();
            continue;
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(line.trim_end());
    }
    if !cur.trim().is_empty() {
        raw.push(cur.trim().to_string());
    }
    // Glue a heading-only block to the next block.
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    let mut pending: Option<String> = None;
    for b in raw {
        let b = match pending.take() {
            Some(h) => format!("{h}\n\n{b}"),
            None => b,
        };
        if is_heading(&b) {
            pending = Some(b);
        } else {
            out.push(b);
        }
    }
    if let Some(h) = pending {
        out.push(h);
    }
    out
}

fn is_heading(block: &str) -> bool {
    !block.contains('\n') && block.starts_with('#') && block.len() < 200
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunker(max: usize) -> Chunker {
        Chunker::new(&ChunkerSpec { max_chars: max, overlap_chars: 0 })
    }

    #[test]
    fn editing_one_paragraph_keeps_the_others() {
        let c = chunker(200);
        let before = "# Title\n\nFirst paragraph here.\n\nSecond paragraph.\n\nThird one.";
        let after = "# Title\n\nFirst paragraph here.\n\nSecond paragraph, edited.\n\nThird one.";
        let a = c.chunks(before);
        let b = c.chunks(after);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], "# Title\n\nFirst paragraph here.");
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_eq!(a[2], b[2]);
    }

    #[test]
    fn long_paragraphs_are_split_within_the_limit() {
        let c = chunker(100);
        let para = "word ".repeat(100);
        let chunks = c.chunks(&format!("intro\n\n{para}\n\noutro"));
        assert!(chunks.len() >= 6, "{chunks:?}");
        assert!(chunks.iter().all(|ch| ch.chars().count() <= 100));
        assert_eq!(chunks.first().map(String::as_str), Some("intro"));
        assert_eq!(chunks.last().map(String::as_str), Some("outro"));
    }

    #[test]
    fn fenced_code_stays_whole_and_blank_text_has_no_chunks() {
        let c = chunker(500);
        let chunks = c.chunks("a\n\n```\nx\n\ny\n```\n\nb");
        assert_eq!(chunks, vec!["a", "```\nx\n\ny\n```", "b"]);
        assert!(c.chunks("  \n\n \n").is_empty());
    }
}

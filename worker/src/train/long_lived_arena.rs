//! A jemalloc arena of its own for the trainer's best weights, which outlive every step.
//!
//! Why: the training step frees and reallocates its activations every step, and with freed
//! pages kept (see `keep_freed_pages` in `main.rs`) the main thread's arena serves the widest
//! batch from the free runs the earlier steps left. A block that stays live across steps,
//! placed among those runs, splits one for good; once none is left long enough for the widest
//! batch's 64 MiB maps, they take fresh pages, and the process keeps those for the rest of the
//! run (BENCHMARKS.md, "The recipe trained wider: memory"). The best weights (5 MB for
//! `small`, serialized anew at every evaluation that improves on them) are such a block.
//! Allocated here, they never sit among the activations' pages.
//!
//! The checkpoint snapshot does not come here: it is freed before the next step (the loop waits
//! for its write, see `CHECKPOINT_WAIT` in the trainer), and a freed block of that size merges
//! back into its neighbours. Here it would add its 15 MB to the resident size, since the main
//! arena never hands its freed pages back.
//!
//! The arena hands its freed pages back at once: its blocks are allocated once per improving
//! evaluation, so keeping their pages for reuse would buy nothing and cost their size.

use anyhow::{anyhow, Result};

/// The arena, or none when jemalloc refused one (then blocks go where they always did).
pub struct LongLivedArena {
    index: Option<u32>,
}

impl LongLivedArena {
    /// Create the arena. Never fails: without it the trainer only loses the memory saving,
    /// which is logged.
    pub fn create() -> Self {
        match create_arena() {
            Ok(index) => Self { index: Some(index) },
            Err(e) => {
                tracing::warn!(
                    "no allocator arena for long-lived blocks ({e:#}); checkpoints and best weights share the training step's memory"
                );
                Self { index: None }
            }
        }
    }

    /// The arena's index in jemalloc, when there is one.
    pub fn index(&self) -> Option<u32> {
        self.index
    }

    /// Run `f` with this thread's allocations served from the arena. Blocks allocated inside
    /// may be freed anywhere (jemalloc returns a block to the arena it came from).
    ///
    /// The thread's cache is off while `f` runs: it holds blocks of the arena it was filled
    /// from, and switching it off empties it, so that small blocks come from this arena too.
    pub fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let Some(index) = self.index else {
            return f();
        };
        let home = match enter(index) {
            Ok(home) => home,
            Err(e) => {
                tracing::debug!("allocator arena {index} not entered: {e:#}");
                return f();
            }
        };
        let out = f();
        if let Err(e) = leave(home) {
            tracing::warn!("returning the thread to allocator arena {home}: {e:#}");
        }
        out
    }
}

fn create_arena() -> Result<u32> {
    // SAFETY: `arenas.create` reads as an `unsigned`; the decay keys are `ssize_t`.
    let index: u32 = ctl(
        unsafe { tikv_jemalloc_ctl::raw::read(b"arenas.create\0") },
        "arenas.create",
    )?;
    for key in ["dirty_decay_ms", "muzzy_decay_ms"] {
        let name = format!("arena.{index}.{key}\0");
        ctl(
            unsafe { tikv_jemalloc_ctl::raw::write(name.as_bytes(), 0isize) },
            name.trim_end_matches('\0'),
        )?;
    }
    Ok(index)
}

/// A mallctl result with the key it was about (jemalloc's errors are bare errno values).
fn ctl<T>(result: Result<T, tikv_jemalloc_ctl::Error>, key: &str) -> Result<T> {
    result.map_err(|e| anyhow!("jemalloc `{key}`: {e}"))
}

/// Bind this thread to arena `index` with its cache off; returns the arena it was bound to.
fn enter(index: u32) -> Result<u32> {
    // SAFETY: `thread.arena` is an `unsigned`, `thread.tcache.enabled` a `bool`.
    unsafe {
        let home: u32 = ctl(
            tikv_jemalloc_ctl::raw::read(b"thread.arena\0"),
            "thread.arena",
        )?;
        ctl(
            tikv_jemalloc_ctl::raw::write(b"thread.tcache.enabled\0", false),
            "thread.tcache.enabled",
        )?;
        if let Err(e) = tikv_jemalloc_ctl::raw::write(b"thread.arena\0", index) {
            let _ = tikv_jemalloc_ctl::raw::write(b"thread.tcache.enabled\0", true);
            return ctl(Err(e), "thread.arena");
        }
        Ok(home)
    }
}

/// Bind this thread back to arena `home` with its cache on.
fn leave(home: u32) -> Result<()> {
    // SAFETY: as in `enter`.
    unsafe {
        ctl(
            tikv_jemalloc_ctl::raw::write(b"thread.arena\0", home),
            "thread.arena",
        )?;
        ctl(
            tikv_jemalloc_ctl::raw::write(b"thread.tcache.enabled\0", true),
            "thread.tcache.enabled",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arena a live block belongs to (`arenas.lookup`).
    fn arena_of(block: &[u8]) -> u32 {
        let mut index: u32 = u32::MAX;
        let mut len = std::mem::size_of::<u32>();
        let ptr = block.as_ptr() as *const std::ffi::c_void;
        // SAFETY: `arenas.lookup` takes a pointer to a live block and answers an `unsigned`.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arenas.lookup".as_ptr(),
                (&mut index as *mut u32).cast(),
                &mut len,
                (&ptr as *const *const std::ffi::c_void).cast_mut().cast(),
                std::mem::size_of::<*const std::ffi::c_void>(),
            )
        };
        assert_eq!(rc, 0, "arenas.lookup failed");
        index
    }

    fn thread_arena() -> u32 {
        unsafe { tikv_jemalloc_ctl::raw::read(b"thread.arena\0") }.unwrap()
    }

    #[test]
    fn blocks_allocated_in_scope_come_from_the_arena_and_the_thread_goes_home() {
        let arena = LongLivedArena::create();
        let index = arena.index().expect("jemalloc creates arenas");
        let home = thread_arena();
        assert_ne!(index, home);
        // A large block (a checkpoint's) and a small one (a name), both kept past the scope.
        let (large, small) = arena.scope(|| (vec![1u8; 4 << 20], vec![2u8; 24]));
        assert_eq!(arena_of(&large), index);
        assert_eq!(arena_of(&small), index);
        assert_eq!(thread_arena(), home);
        let after = vec![3u8; 4 << 20];
        assert_eq!(arena_of(&after), home, "the step's blocks stay home");
        drop(large); // freed outside the scope: back to its own arena, no crash
    }

    #[test]
    fn scope_returns_what_the_closure_returns_without_an_arena() {
        let none = LongLivedArena { index: None };
        assert_eq!(none.scope(|| 7), 7);
    }
}

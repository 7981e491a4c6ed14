//! The door: the guest's `host.call(ptr, len, out_ptr_ptr, out_len_ptr) -> i32` import, through
//! which guest code calls hosted tools ("code mode"). The sandbox moves bytes only: it reads
//! the guest's request frame, hands it to the call's `HostTools`, and writes the answer back
//! into memory the guest allocates with its `host_alloc` export. What the frames mean is the
//! tools' business (`tools::code_mode`).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use wasmtime::{Caller, Extern};

/// The call offers no host tools: the guest raises "this run has no tools".
const NO_HOST: i32 = -1;
/// A pointer outside the guest's memory, or no memory to answer into: the guest raises
/// "the door failed".
const HOST_FAULT: i32 = -2;
/// The largest request frame read from the guest; a longer one is answered without being read.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// The largest answer written back; the tools keep theirs below it.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// A request frame as the guest sent it.
#[derive(Debug)]
pub enum Frame {
    Bytes(Vec<u8>),
    /// A frame over `MAX_REQUEST_BYTES`, left unread.
    TooLong(usize),
}

/// What answers a guest's frames for one call.
#[async_trait]
pub trait HostTools: Send + Sync {
    /// The answer frame to `frame`. `deadline` is the calling guest's own: an answer after it
    /// is never read.
    async fn answer(&self, frame: Frame, deadline: Instant) -> Vec<u8>;
}

/// What the door needs of a store's data: who answers, and by when.
pub(super) trait DoorState: Send {
    /// `None`: the call offers no tools.
    fn host_tools(&self) -> Option<Arc<dyn HostTools>>;
    fn deadline(&self) -> Instant;
}

/// The door's implementation, called by the linker for every `host.call`.
pub(super) async fn serve<T: DoorState>(
    caller: &mut Caller<'_, T>,
    (ptr, len, out_ptr, out_len): (i32, i32, i32, i32),
) -> wasmtime::Result<i32> {
    let Some(tools) = caller.data().host_tools() else { return Ok(NO_HOST) };
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else { return Ok(HOST_FAULT) };
    let [ptr, len, out_ptr, out_len] = [ptr, len, out_ptr, out_len].map(|n| n as u32 as usize);
    let within = |size: usize, at: usize, n: usize| at.checked_add(n).is_some_and(|end| end <= size);
    let size = memory.data_size(&*caller);
    if !within(size, ptr, len) || !within(size, out_ptr, 4) || !within(size, out_len, 4) {
        return Ok(HOST_FAULT);
    }
    let frame = if len > MAX_REQUEST_BYTES {
        Frame::TooLong(len)
    } else {
        Frame::Bytes(memory.data(&*caller)[ptr..ptr + len].to_vec())
    };
    let deadline = caller.data().deadline();
    let answer = tools.answer(frame, deadline).await;

    let Some(alloc) = caller.get_export("host_alloc").and_then(Extern::into_func) else { return Ok(HOST_FAULT) };
    let Ok(answer_len) = i32::try_from(answer.len()) else { return Ok(HOST_FAULT) };
    let at = alloc.typed::<i32, i32>(&*caller)?.call_async(&mut *caller, answer_len).await? as u32 as usize;
    // Allocating may have grown the memory.
    if at == 0 || !within(memory.data_size(&*caller), at, answer.len()) {
        return Ok(HOST_FAULT);
    }
    memory.write(&mut *caller, at, &answer)?;
    memory.write(&mut *caller, out_ptr, &(at as u32).to_le_bytes())?;
    memory.write(&mut *caller, out_len, &(answer.len() as u32).to_le_bytes())?;
    Ok(0)
}

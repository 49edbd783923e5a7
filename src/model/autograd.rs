//! Graph nodes for values computed outside candle's graph: the forward hands over a value a fast
//! kernel computed from detached inputs, the backward is a hand-written gradient with respect
//! to the inputs alone (every weight being frozen, no weight gradient is ever computed).

use std::sync::{Mutex, PoisonError};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage,
    Tensor,
};

/// The gradients with respect to an op's inputs, given those inputs, the op's output and the
/// output's gradient (all detached); None for an input that needs none.
type InputGrads =
    Box<dyn Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// The graph node of a value computed outside the graph: its forward hands that value over,
/// its backward is a hand-written input gradient.
pub(crate) struct InputOnly {
    name: &'static str,
    value: Mutex<Option<Tensor>>,
    input_grads: InputGrads,
}

impl InputOnly {
    /// The node of `value`, computed outside the graph, whose backward is `input_grads`
    /// (inputs, output, output gradient → a gradient per input, None where none is needed).
    pub(crate) fn new(
        name: &'static str,
        value: Tensor,
        input_grads: impl Fn(&[Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self {
            name,
            value: Mutex::new(Some(value)),
            input_grads: Box::new(input_grads),
        }
    }

    /// Taken rather than cloned so that the op does not keep a second copy of the output alive.
    fn take_value(&self) -> Result<Tensor> {
        self.value
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: forward ran twice", self.name)))
    }

    fn cpu_value(&self) -> Result<(CpuStorage, Shape)> {
        let value = self.take_value()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((copy_viewed(s, layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: the value is not on the input's device", self.name),
        }
    }

    fn cuda_value(&self) -> Result<(CudaStorage, Shape)> {
        let value = self.take_value()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((copy_viewed(s, layout)?, layout.shape().clone())),
            _ => candle_core::bail!("{}: the value is not on the input's device", self.name),
        }
    }

    fn grads(
        &self,
        inputs: &[&Tensor],
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        // Detached so that the gradient does not drag the forward graph along with it.
        let inputs: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        (self.input_grads)(&inputs, &output.detach(), grad)
    }
}

/// A fresh copy of exactly the elements `layout` views: candle's `try_clone` copies the whole
/// storage whatever the layout.
fn copy_viewed<S>(storage: &S, layout: &Layout) -> Result<S>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: `copy_strided_src` writes every element of `layout`'s shape, so nothing
    // uninitialised is ever read (candle's own `contiguous` does the same).
    let mut copy = unsafe {
        storage
            .device()
            .alloc_uninit(layout.shape(), storage.dtype())?
    };
    storage.copy_strided_src(&mut copy, 0, layout)?;
    Ok(copy)
}

impl CustomOp1 for InputOnly {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu_value()
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda_value()
    }

    fn bwd(&self, input: &Tensor, output: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.grads(&[input], output, grad)?.pop().flatten())
    }
}

impl CustomOp2 for InputOnly {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_value()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_value()
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b], output, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for InputOnly {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu_value()
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.cuda_value()
    }

    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.grads(&[a, b, c], output, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// `value`, computed by a fast kernel from `input.detach()`, as a node of `input`'s graph whose
/// backward is `input_grad(input, output, output_grad)`; just `value` when `input` is not in a
/// graph.
pub(crate) fn with_input_grad(
    name: &'static str,
    input: &Tensor,
    value: Tensor,
    input_grad: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(value);
    }
    input.apply_op1(InputOnly::new(name, value, move |x, y, g| {
        Ok(vec![Some(input_grad(&x[0], y, g)?)])
    }))
}

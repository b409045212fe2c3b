"""Devices with memory budgets, and the planner that fits a graph's chunks into them."""
from sagann.scheduler.config import ScheduleConfig
from sagann.scheduler.devices import BudgetExceeded, CpuDevice, Device, EmulatedLink, format_bytes, parse_bytes
from sagann.scheduler.cuda import CudaDevice, cuda_available
from sagann.scheduler.planner import BudgetTooSmall, LayerShape, Planner, WorkingSet

__all__ = ["ScheduleConfig", "BudgetExceeded", "BudgetTooSmall", "CpuDevice", "CudaDevice", "cuda_available", "Device", "EmulatedLink", "LayerShape", "Planner", "WorkingSet", "format_bytes", "parse_bytes"]

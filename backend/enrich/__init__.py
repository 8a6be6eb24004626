"""Adding metric families (CCP, probe, SAR, SelfCheck) to runs already stored."""

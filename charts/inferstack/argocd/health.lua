-- Argo CD health check for inferstack.dev/InferenceStack
-- (argocd-cm: resource.customizations.health.inferstack.dev_InferenceStack).
-- status.phase is decided by the operator alone (core/status.py); this maps it:
-- Healthy -> Healthy, Pending/Progressing -> Progressing, Paused -> Suspended,
-- Degraded/Failed -> Degraded. A spec the operator has not seen yet
-- (status.observedGeneration < metadata.generation) is Progressing, whatever
-- the phase says: it describes the previous spec.
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the inferstack operator to report a status"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local phase = obj.status.phase
local message = obj.status.message or ""
if phase == "Healthy" then
  hs.status = "Healthy"
elseif phase == "Pending" or phase == "Progressing" then
  hs.status = "Progressing"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "Degraded" or phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Unknown"
end
hs.message = phase .. ": " .. message
return hs

{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "migration-runner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: "<release>-<chart>" unless the release name already contains the chart name. */}}
{{- define "migration-runner.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "migration-runner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "migration-runner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "migration-runner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "migration-runner.labels" -}}
helm.sh/chart: {{ include "migration-runner.chart" . }}
{{ include "migration-runner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: database-migration
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "migration-runner.jobName" -}}
{{- $base := include "migration-runner.fullname" . }}
{{- $suffix := tpl (toString .Values.job.nameSuffix) . | lower | replace "." "-" | replace "_" "-" | replace ":" "-" }}
{{- if $suffix }}
{{- printf "%s-%s" ($base | trunc (int (sub 62 (len $suffix)))) $suffix | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $base }}
{{- end }}
{{- end }}

{{- define "migration-runner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "migration-runner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "migration-runner.secretName" -}}
{{- if .Values.database.createSecret }}
{{- printf "%s-database" (include "migration-runner.fullname" .) }}
{{- else }}
{{- tpl .Values.database.existingSecret . }}
{{- end }}
{{- end }}

{{- define "migration-runner.secretKey" -}}
{{- if .Values.database.createSecret }}url{{ else }}{{ .Values.database.existingSecretKey }}{{ end }}
{{- end }}

{{- define "migration-runner.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Annotations of the resources the Job needs (Secret, ServiceAccount, Role, RoleBinding): hooks
with a lower weight than the Job, because a pre-install hook runs before the release's ordinary
resources exist.
*/}}
{{- define "migration-runner.supportingAnnotations" -}}
{{- if .Values.hooks.enabled }}
helm.sh/hook: {{ .Values.hooks.events | quote }}
helm.sh/hook-weight: {{ .Values.hooks.supportingWeight | quote }}
helm.sh/hook-delete-policy: {{ .Values.hooks.supportingDeletePolicy | quote }}
{{- end }}
{{- if .Values.argo.enabled }}
argocd.argoproj.io/hook: {{ .Values.argo.hook | quote }}
argocd.argoproj.io/hook-delete-policy: {{ .Values.argo.hookDeletePolicy | quote }}
argocd.argoproj.io/sync-wave: {{ .Values.argo.supportingSyncWave | quote }}
{{- end }}
{{- end }}

{{- define "migration-runner.jobAnnotations" -}}
{{- if .Values.hooks.enabled }}
helm.sh/hook: {{ .Values.hooks.events | quote }}
helm.sh/hook-weight: {{ .Values.hooks.weight | quote }}
helm.sh/hook-delete-policy: {{ .Values.hooks.deletePolicy | quote }}
{{- end }}
{{- if .Values.argo.enabled }}
argocd.argoproj.io/hook: {{ .Values.argo.hook | quote }}
argocd.argoproj.io/hook-delete-policy: {{ .Values.argo.hookDeletePolicy | quote }}
argocd.argoproj.io/sync-wave: {{ .Values.argo.syncWave | quote }}
{{- end }}
{{- with .Values.job.annotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The URLs a classic sidecar is asked to quit through when the runner exits. */}}
{{- define "migration-runner.quitUrls" -}}
{{- $urls := list }}
{{- if .Values.sidecarQuit.istio }}{{ $urls = append $urls "http://127.0.0.1:15020/quitquitquit" }}{{ end }}
{{- if .Values.sidecarQuit.cloudSqlProxy }}{{ $urls = append $urls "http://127.0.0.1:9091/quitquitquit" }}{{ end }}
{{- range .Values.sidecarQuit.urls }}{{ $urls = append $urls . }}{{ end }}
{{- toJson $urls }}
{{- end }}

{{/*
The database URL environment variable, from the Secret. Shared by the Job and the wait
init-container snippet.
*/}}
{{- define "migration-runner.databaseEnv" -}}
- name: MIGRATION_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "migration-runner.secretName" . }}
      key: {{ include "migration-runner.secretKey" . }}
{{- end }}

{{/*
An init container for the application's own Deployment: `migration-runner wait` blocks until the
database is at the image's head revision, so pods never start against an old schema.
*/}}
{{- define "migration-runner.waitInitContainer" -}}
- name: wait-for-migrations
  image: {{ include "migration-runner.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: [{{ .Values.runner.executable | quote }}]
  args: ["wait"]
  {{- with .Values.runner.workingDir }}
  workingDir: {{ . }}
  {{- end }}
  env:
    {{- include "migration-runner.databaseEnv" . | nindent 4 }}
    - name: MIGRATION_WAIT_TIMEOUT
      value: {{ .Values.waitInitContainer.timeout | quote }}
    - name: MIGRATION_LOG_FORMAT
      value: {{ .Values.runner.logFormat | quote }}
    {{- with .Values.runner.config }}
    - name: MIGRATION_CONFIG
      value: {{ . | quote }}
    {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* The chart's name, overridable. */}}
{{- define "falachefe-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: names every namespaced object of the release.
A release named after the chart is not repeated ("falachefe-operator", not
"falachefe-operator-falachefe-operator").
*/}}
{{- define "falachefe-operator.fullname" -}}
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

{{/*
Names of cluster-scoped objects (ClusterRoles and their bindings) carry the
release namespace: two releases of the same name in two namespaces must not
share them.
*/}}
{{- define "falachefe-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "falachefe-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "falachefe-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "falachefe-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "falachefe-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "falachefe-operator.labels" -}}
helm.sh/chart: {{ include "falachefe-operator.chart" . }}
{{ include "falachefe-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: falachefe
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "falachefe-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "falachefe-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "falachefe-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules of files/rbac-rules.yaml, sorted by where the chart grants them
(rendered as YAML; read back with fromYaml):

- leaderElection: rules on coordination.k8s.io (the Lease), granted only in
  the release namespace, where the Lease lives;
- cluster: rules on cluster-scoped resources (CRDs, namespaces), which only
  a ClusterRole can grant;
- watched: everything else, granted cluster-wide or in each watched
  namespace.

A rule must not mix the three kinds; the chart refuses one that does.
*/}}
{{- define "falachefe-operator.ruleSets" -}}
{{- $clusterScoped := list "customresourcedefinitions" "namespaces" }}
{{- $rules := .Files.Get "files/rbac-rules.yaml" | fromYamlArray }}
{{- if and $rules (kindIs "string" (first $rules)) }}
{{- fail (printf "files/rbac-rules.yaml is not a YAML list of PolicyRules: %s" (first $rules)) }}
{{- end }}
{{- $election := list }}
{{- $cluster := list }}
{{- $watched := list }}
{{- range $rule := $rules }}
{{- $resources := $rule.resources | default list }}
{{- $groups := $rule.apiGroups | default list }}
{{- $scoped := 0 }}
{{- range $resources }}{{ if has . $clusterScoped }}{{ $scoped = add1 $scoped }}{{ end }}{{ end }}
{{- if has "coordination.k8s.io" $groups }}
{{- if gt (len $groups) 1 }}
{{- fail (printf "files/rbac-rules.yaml: a coordination.k8s.io rule must not name other API groups: %v" $groups) }}
{{- end }}
{{- $election = append $election $rule }}
{{- else if gt $scoped 0 }}
{{- if ne $scoped (len $resources) }}
{{- fail (printf "files/rbac-rules.yaml: a rule must not mix cluster-scoped and namespaced resources: %v" $resources) }}
{{- end }}
{{- $cluster = append $cluster $rule }}
{{- else }}
{{- $watched = append $watched $rule }}
{{- end }}
{{- end }}
{{- dict "leaderElection" $election "cluster" $cluster "watched" $watched | toYaml }}
{{- end }}

{{/*
The namespaces watched, for Roles and the --namespace arguments: the listed
ones, or the release namespace when none is listed (the default); none
(an empty list) when watching all namespaces.
*/}}
{{- define "falachefe-operator.watchedNamespaces" -}}
{{- if .Values.watch.allNamespaces }}
{{- if .Values.watch.namespaces }}
{{- fail "watch.namespaces is set but watch.allNamespaces is true: set watch.allNamespaces=false to watch only those namespaces" }}
{{- end }}
{{- list | toYaml }}
{{- else if .Values.watch.namespaces }}
{{- .Values.watch.namespaces | uniq | toYaml }}
{{- else }}
{{- list .Release.Namespace | toYaml }}
{{- end }}
{{- end }}

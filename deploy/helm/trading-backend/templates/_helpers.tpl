{{/* Labels of every object; `name` is the component (write-region, relay, read-region-eu). */}}
{{- define "trading.labels" -}}
{{ include "trading.selector" . }}
app.kubernetes.io/part-of: trading-backend
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "trading.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "trading.fullname" -}}
{{ printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* One environment variable per entry of `settings`, under the service's `prefix`. */}}
{{- define "trading.settings" -}}
{{- range $name, $value := .settings }}
- name: {{ printf "%s%s" $.prefix $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The edge files (TLS and the token key) and the NATS login, mounted by trading.volumes. */}}
{{- define "trading.edgeEnv" -}}
- name: {{ .prefix }}EDGE__TLS_CERT_FILE
  value: /etc/trading/tls/tls.crt
- name: {{ .prefix }}EDGE__TLS_KEY_FILE
  value: /etc/trading/tls/tls.key
- name: {{ .prefix }}EDGE__TOKEN_PUBLIC_KEY_FILE
  value: /etc/trading/token/token-public.pem
- name: {{ .prefix }}NATS_LOGIN__USER
  value: {{ .natsUser | quote }}
- name: {{ .prefix }}NATS_LOGIN__PASSWORD_FILE
  value: /etc/trading/nats/password
- name: {{ .prefix }}LISTEN_ADDR
  value: {{ printf "0.0.0.0:%v" .port | quote }}
- name: {{ .prefix }}EDGE__METRICS_ADDR
  value: {{ printf "0.0.0.0:%v" .root.Values.metrics.port | quote }}
{{- end }}

{{- define "trading.mounts" -}}
- name: tls
  mountPath: /etc/trading/tls
  readOnly: true
- name: token
  mountPath: /etc/trading/token
  readOnly: true
- name: nats
  mountPath: /etc/trading/nats
  readOnly: true
{{- end }}

{{- define "trading.volumes" -}}
- name: tls
  secret:
    secretName: {{ .root.Values.secrets.tls }}
    defaultMode: 0400
- name: token
  secret:
    secretName: {{ .root.Values.secrets.tokenPublicKey }}
    items:
      - key: token-public.pem
        path: token-public.pem
- name: nats
  secret:
    secretName: {{ .root.Values.secrets.natsPasswords }}
    defaultMode: 0400
    items:
      - key: {{ .natsUser }}
        path: password
{{- end }}

{{/* grpc.health.v1 over TLS, from inside the pod (the kubelet's gRPC probe has no TLS). */}}
{{- define "trading.probes" -}}
{{- $probe := dict "exec" (dict "command" (list "grpc-health-probe" "--ca-file" "/etc/trading/tls/ca.crt" (printf "localhost:%v" .port))) -}}
{{- $p := .root.Values.probes }}
startupProbe:
  {{- toYaml $probe | nindent 2 }}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.startupFailureThreshold }}
readinessProbe:
  {{- toYaml $probe | nindent 2 }}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.failureThreshold }}
livenessProbe:
  {{- toYaml $probe | nindent 2 }}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.failureThreshold }}
{{- end }}

{{/* Pod annotations: where Prometheus scrapes the pod's metrics. */}}
{{- define "trading.podAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .root.Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}

{{/* The metrics port of every container. */}}
{{- define "trading.metricsPort" -}}
- name: metrics
  containerPort: {{ .root.Values.metrics.port }}
{{- end }}

{{/* The pod spec parts every service shares. */}}
{{- define "trading.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: 30
{{- end }}

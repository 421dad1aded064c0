{{/* Names: <release>-mx unless the release name already contains "mx". */}}
{{- define "mx.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mx.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "mx.selector" (list $ "queue") */}}
{{- define "mx.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every pod of the release, whatever its component. */}}
{{- define "mx.releaseSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mx.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "mx.peersService" -}}{{ include "mx.fullname" . }}-queue-peers{{- end -}}
{{- define "mx.adminSecret" -}}
{{- default (printf "%s-admin" (include "mx.fullname" .)) .Values.control.adminTokens.existingSecret -}}
{{- end -}}
{{- define "mx.authSecret" -}}
{{- default (printf "%s-auth" (include "mx.fullname" .)) .Values.ingress.auth.existingSecret -}}
{{- end -}}
{{/* The STARTTLS Secret: named in values, or made from PEM in values; "" for none. */}}
{{- define "mx.tlsSecret" -}}
{{- if .Values.ingress.tls.secretName -}}
{{- .Values.ingress.tls.secretName -}}
{{- else if .Values.ingress.tls.certificate -}}
{{- printf "%s-tls" (include "mx.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- define "mx.authEnabled" -}}
{{- if or .Values.ingress.auth.existingSecret .Values.ingress.auth.users }}true{{ end -}}
{{- end -}}

{{/*
mx.yaml: what the chart owns (addresses, peers, paths), with .Values.config
merged over it. Peers are the StatefulSet's stable DNS names; Raft
resolves them at every connect, so a restarted pod's new IP is found.
*/}}
{{- define "mx.config" -}}
{{- $full := include "mx.fullname" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.queue.replicas) -}}
{{- $host := printf "%s-queue-%d.%s.%s.svc.%s" $full $i (include "mx.peersService" $) $.Release.Namespace $.Values.clusterDomain -}}
{{- $peer := dict "id" (add1 $i) "grpc" (printf "%s:%d" $host (int $.Values.ports.queue)) "raft" (printf "%s:%d" $host (int $.Values.ports.raft)) -}}
{{- if ge $i (int $.Values.queue.bootstrapReplicas) -}}
{{- $_ := set $peer "join" true -}}
{{- end -}}
{{- $peers = append $peers $peer -}}
{{- end -}}
{{- $ingress := dict "listen" (printf "0.0.0.0:%d" (int .Values.ports.smtp)) -}}
{{- if include "mx.tlsSecret" . -}}
{{- $_ := set $ingress "tls_cert_file" "/var/run/mx-secrets/tls/tls.crt" -}}
{{- $_ := set $ingress "tls_key_file" "/var/run/mx-secrets/tls/tls.key" -}}
{{- end -}}
{{- if include "mx.authEnabled" . -}}
{{- $_ := set $ingress "auth_users_file" "/var/run/mx-secrets/auth/users" -}}
{{- end -}}
{{- with .Values.ingress.dkim.keys -}}
{{- $keys := list -}}
{{- range . -}}
{{- $keys = append $keys (dict "domain" .domain "selector" .selector "key_file" (printf "/var/run/mx-secrets/dkim/%s" .file)) -}}
{{- end -}}
{{- $_ := set $ingress "dkim" (dict "keys" $keys) -}}
{{- end -}}
{{- $chart := dict
  "hostname" (required "hostname is required (the FQDN of the mail service)" .Values.hostname)
  "log_level" .Values.logLevel
  "metrics_listen" (printf "0.0.0.0:%d" (int .Values.ports.metrics))
  "health_listen" (printf "0.0.0.0:%d" (int .Values.ports.health))
  "queue" (dict
    "shards" (int .Values.queue.shards)
    "peers" $peers
    "listen" (printf "0.0.0.0:%d" (int .Values.ports.queue))
    "raft_listen" (printf "0.0.0.0:%d" (int .Values.ports.raft))
    "data_dir" "/var/lib/mx/queue")
  "ingress" $ingress
  "control" (dict
    "listen" (printf "0.0.0.0:%d" (int .Values.ports.control))
    "admin_tokens_file" "/var/run/mx-secrets/admin/tokens")
-}}
{{- $merged := mustMergeOverwrite (deepCopy .Values.config) $chart -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* Pod-level settings shared by every component. */}}
{{- define "mx.podCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The env every container gets: its pod name becomes its node_name. */}}
{{- define "mx.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{- define "mx.probes" -}}
livenessProbe:
  grpc:
    port: {{ .Values.ports.health }}
  initialDelaySeconds: 10
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  grpc:
    port: {{ .Values.ports.health }}
    service: mx.ready
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{- define "mx.configVolume" -}}
- name: config
  configMap:
    name: {{ include "mx.fullname" . }}-config
{{- end -}}

{{- define "mx.checksum" -}}
checksum/config: {{ include "mx.config" . | cat (toYaml .Values.maps) | sha256sum }}
{{- end -}}

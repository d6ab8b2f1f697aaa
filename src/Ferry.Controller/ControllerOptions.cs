namespace Ferry.Controller;

/// <summary>What a controller process does: everything (the default), the database side only, or the public side only.</summary>
public enum ControllerRole
{
    /// <summary>Database and public listener in one process.</summary>
    All,

    /// <summary>Holds the database and serves through edges it dials out to; listens on nothing.</summary>
    Core,

    /// <summary>Faces daemons and operators, holds no database, and passes every connection to the core over its links.</summary>
    Edge,
}

/// <summary>How a controller runs; bound from the 'ferry controller' command line.</summary>
public sealed class ControllerOptions
{
    /// <summary>Folder for the SQLite database, the TLS certificate and admin.key.</summary>
    public string DataDirectory { get; set; } = "./ferry-data";

    /// <summary>Host and port to serve HTTPS on; port 0 picks a free one.</summary>
    public string Listen { get; set; } = "127.0.0.1:8443";

    /// <summary>PostgreSQL connection string; SQLite under <see cref="DataDirectory"/> when unset.</summary>
    public string? Database { get; set; }

    public string? TlsCertificatePath { get; set; }
    public string? TlsKeyPath { get; set; }

    /// <summary>Proxies whose X-Forwarded-For is believed when telling a daemon's public IP.</summary>
    public IList<string> TrustedProxies { get; } = [];

    /// <summary>How often daemons are probed; a daemon is offline after three missed probes. At most 5 s.</summary>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(5);

    public TimeSpan AccessTokenLifetime { get; set; } = TimeSpan.FromHours(1);
    public TimeSpan DeviceTokenLifetime { get; set; } = TimeSpan.FromHours(12);
    public TimeSpan CertificateLifetime { get; set; } = TimeSpan.FromHours(12);

    /// <summary>Beyond this clock offset a daemon's session is refused.</summary>
    public TimeSpan ClockTolerance { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Beyond this clock offset a daemon is flagged with a warning.</summary>
    public TimeSpan ClockWarning { get; set; } = TimeSpan.FromSeconds(3);

    /// <summary>A console session unused this long ends; the operator signs in again.</summary>
    public TimeSpan ConsoleIdleTimeout { get; set; } = TimeSpan.FromMinutes(30);

    /// <summary>Names this process among replicas sharing one database.</summary>
    public string ReplicaId { get; set; } = Environment.MachineName;

    public ControllerRole Role { get; set; } = ControllerRole.All;

    /// <summary>Core role: the edges' link addresses (HOST:PORT) to dial.</summary>
    public IList<string> Edges { get; } = [];

    /// <summary>Edge role: where the core's links connect.</summary>
    public string? LinkListen { get; set; }

    /// <summary>Core and edge roles: the file with the secret that lets the core's links in.</summary>
    public string? EdgeSecretFile { get; set; }

    /// <summary>IP:PORT of a plain-HTTP listener for /healthz, /readyz and /metrics; off when unset.</summary>
    public string? MetricsListen { get; set; }

    /// <summary>The public URL daemons are told to use in deploy instructions; derived from the listen address when unset.</summary>
    public string? PublicUrl { get; set; }
}

using System.Text.Json;
using System.Text.Json.Serialization;

namespace Ferry.Controller.Sessions;

/// <summary>What a <see cref="ReplicaNotice"/> asks the replicas that hear it to do.</summary>
public enum ReplicaNoticeKind
{
    /// <summary>Recompute every session's grants and access table.</summary>
    Policy,

    /// <summary>Recompute every session's relay list.</summary>
    Relays,

    /// <summary>Recompute every client's connector list.</summary>
    Connectors,

    /// <summary>Deliver <see cref="ReplicaNotice.Text"/> (a session message) to <see cref="ReplicaNotice.Identity"/> if its session is here.</summary>
    Send,

    /// <summary>End the session of <see cref="ReplicaNotice.Identity"/> if it is here, telling it <see cref="ReplicaNotice.Text"/>.</summary>
    Disconnect,
}

/// <summary>One replica's word to the others sharing its database; <paramref name="Origin"/> is the sender, which already acted on it.</summary>
public sealed record ReplicaNotice(ReplicaNoticeKind Kind, string Origin, string? Identity = null, string? Text = null)
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { Converters = { new JsonStringEnumConverter() } };

    public string Serialize() => JsonSerializer.Serialize(this, Json);

    /// <summary>The notice in <paramref name="text"/>, or null when it is not one (another program on the channel, or a newer format).</summary>
    public static ReplicaNotice? TryParse(string text)
    {
        try
        {
            return JsonSerializer.Deserialize<ReplicaNotice>(text, Json);
        }
        catch (JsonException)
        {
            return null;
        }
    }
}

/// <summary>
/// How controller replicas on one database reach each other's sessions: pushes to recompute, messages for a session held
/// elsewhere, and whether a replica named in the database is still alive. A lone controller (SQLite) has nobody to tell.
/// </summary>
public class ReplicaBus
{
    /// <summary>Whether other replicas may exist: messages for sessions not held here are then passed on instead of refused.</summary>
    public virtual bool IsShared => false;

    /// <summary>Raised for every notice another replica sent.</summary>
    public event Action<ReplicaNotice>? Received;

    /// <summary>Raised after a lost link to the others came back: notices may have been missed, so everything is recomputed.</summary>
    public event Action? Resynchronize;

    /// <summary>Tells the other replicas; a lone controller has nobody to tell.</summary>
    public virtual Task PublishAsync(ReplicaNotice notice, CancellationToken ct) => Task.CompletedTask;

    /// <summary>Whether replica <paramref name="replica"/> still runs; a lone controller knows only itself, and says yes, so stale-session rules apply.</summary>
    public virtual Task<bool> IsAliveAsync(string replica, CancellationToken ct) => Task.FromResult(true);

    protected void OnReceived(ReplicaNotice notice) => Received?.Invoke(notice);

    protected void OnResynchronize() => Resynchronize?.Invoke();
}

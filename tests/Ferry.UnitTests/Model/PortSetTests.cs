using Ferry.Core.Model;

namespace Ferry.UnitTests.Model;

public sealed class PortSetTests
{
    [Theory]
    [InlineData(null, "all")]
    [InlineData("", "all")]
    [InlineData("ALL", "all")]
    [InlineData("none", "none")]
    [InlineData("443, 22,8000-8100", "22,443,8000-8100")]
    [InlineData("1-65535", "all")]
    public void Parses_and_prints_canonically(string? text, string canonical)
    {
        Assert.True(PortSet.TryParse(text, out var set, out var error), error);
        Assert.Equal(canonical, set.ToString());
    }

    [Theory]
    [InlineData("0", "not a port or range")]
    [InlineData("65536", "not a port or range")]
    [InlineData("22,", "not a port or range")]
    [InlineData("80-22", "runs backwards")]
    [InlineData("http", "not a port or range")]
    public void Refuses_bad_port_lists(string text, string reason)
    {
        Assert.False(PortSet.TryParse(text, out _, out var error));
        Assert.Contains(reason, error, StringComparison.Ordinal);
    }

    [Fact]
    public void Contains_checks_every_range()
    {
        Assert.True(PortSet.TryParse("22,8000-8100", out var set, out _));
        Assert.True(set.Contains(22));
        Assert.True(set.Contains(8000));
        Assert.True(set.Contains(8100));
        Assert.False(set.Contains(8101));
        Assert.False(set.Contains(23));
        Assert.False(PortSet.None.Contains(22));
        Assert.True(PortSet.All.Contains(65535));
    }
}
